"""tools/convert_annotations.py and deformable_detr.data.converters: VOC, CSV and YOLO
to COCO JSON with the class ids given, boxes clipped or dropped with counts, each bad
input one clear error that writes nothing; the NEON files when prepared."""

import json
import os

import pytest
import torch
from torchvision.ops import box_convert, box_iou

from deformable_detr.data.coco_json import coco_json_classes
from deformable_detr.data.converters import convert_annotations, write_coco_json

from ..scripts import load_script
from .real_images import neon_trees_or_skip, write_image, write_voc


@pytest.fixture
def images(tmp_path):
    root = tmp_path / "images"
    root.mkdir()
    write_image(root / "a.png", 100, 80, seed=0)
    write_image(root / "b.jpg", 60, 50, seed=1)
    return root


def test_voc_clips_drops_and_counts(tmp_path, images):
    xml = write_voc(
        tmp_path / "a.xml",
        "a.png",
        100,
        80,
        [
            ("tree", 10, 10, 30, 40),  # kept as is
            ("tree", -5, 70, 20, 90),  # clipped: leaves the image at left and bottom
            ("bush", 90, 5, 120, 20),  # clipped at the right
            ("tree", 40, 40, 40, 60),  # zero width: dropped
            ("bush", 50, 30, 45, 35),  # inverted: dropped
            ("tree", 110, 10, 130, 20),  # wholly outside: no area once clipped, dropped
        ],
    )
    conversion = convert_annotations("voc", [xml], str(images), "tree,bush")
    coco = conversion.coco
    assert conversion.clipped == 2 and conversion.dropped == {xml: 3}
    assert coco["categories"] == [{"id": 1, "name": "tree"}, {"id": 2, "name": "bush"}]
    assert coco["images"] == [{"id": 1, "file_name": "a.png", "width": 100, "height": 80}]
    assert [a["bbox"] for a in coco["annotations"]] == [
        [10, 10, 20, 30],
        [0, 70, 20, 10],
        [90, 5, 10, 15],
    ]
    assert [a["category_id"] for a in coco["annotations"]] == [1, 1, 2]
    assert "3 without area or inverted dropped (" + xml + ": 3)" in conversion.summary()


def test_csv_groups_rows_by_image_and_takes_ids_of_a_coco_json(tmp_path, images):
    csv_file = tmp_path / "boxes.csv"
    csv_file.write_text(
        "image_path,xmin,ymin,xmax,ymax,label\n"
        "a.png,1,2,11,12,Tree\nb.jpg,0,0,60,50,Tree\na.png,20,20,30,25,Snag\n"
    )
    classes = tmp_path / "classes.json"
    classes.write_text(
        json.dumps({"categories": [{"id": 7, "name": "Snag"}, {"id": 3, "name": "Tree"}]})
    )
    coco = convert_annotations("csv", [str(csv_file)], str(images), str(classes)).coco
    assert [(i["file_name"], i["width"], i["height"]) for i in coco["images"]] == [
        ("a.png", 100, 80),
        ("b.jpg", 60, 50),
    ]
    assert [(a["image_id"], a["category_id"]) for a in coco["annotations"]] == [
        (1, 3),
        (1, 7),
        (2, 3),
    ]
    out = tmp_path / "out.json"
    write_coco_json(coco, str(out), str(images))
    assert coco_json_classes(str(out)) == ["Tree", "Snag"]  # by id: what configs/custom/ trains


def test_yolo_denormalizes_with_the_class_list(tmp_path, images):
    labels = tmp_path / "labels"
    labels.mkdir()
    (labels / "a.txt").write_text("1 0.5 0.5 0.2 0.25\n0 0.05 0.5 0.2 0.5\n")
    (tmp_path / "classes.txt").write_text("car\nperson\n")
    conversion = convert_annotations(
        "yolo", [str(labels)], str(images), str(tmp_path / "classes.txt")
    )
    coco = conversion.coco
    assert len(coco["images"]) == 2  # b.jpg has no label file: no boxes
    boxes = [(a["category_id"], [round(v, 6) for v in a["bbox"]]) for a in coco["annotations"]]
    assert boxes == [(2, [40.0, 30.0, 20.0, 20.0]), (1, [0.0, 20.0, 15.0, 40.0])]
    assert conversion.clipped == 1


@pytest.mark.parametrize(
    "case, message",
    [
        ("unknown_labels", "labels 'shrub', 'snag' are not among the classes given (tree)"),
        ("missing_image", "missing.png: no such image"),
        ("unreadable_image", "broken.png: not a readable image"),
        ("bad_xml", "bad.xml: not a readable VOC XML file"),
        ("bad_number", "<xmin> is 'ten'; expected a number"),
        ("csv_header", "no column label; expected a header image_path,xmin,ymin,xmax,ymax,label"),
        ("csv_empty", "boxes.csv: no annotations found"),
        ("yolo_index", "a.txt line 1: class index 3; expected 0..1"),
        ("yolo_orphan", "1 label files have no image"),
        ("yolo_classes", "give the class list (--classes)"),
        ("missing_input", "nothing.xml: no such annotation file or folder"),
    ],
)
def test_bad_input_is_a_clear_error_and_writes_nothing(tmp_path, images, case, message):
    labels = tmp_path / "labels"
    labels.mkdir()
    fmt, inputs, classes = "voc", [], "tree"
    if case == "unknown_labels":
        objects = [(label, 1, 1, 5, 5) for label in ("snag", "shrub", "tree")]
        inputs = [write_voc(tmp_path / "a.xml", "a.png", 100, 80, objects)]
    elif case == "missing_image":
        inputs = [write_voc(tmp_path / "m.xml", "missing.png", 10, 10, [])]
    elif case == "unreadable_image":
        (images / "broken.png").write_bytes(b"not a png")
        inputs = [write_voc(tmp_path / "b.xml", "broken.png", 10, 10, [])]
    elif case == "bad_xml":
        (tmp_path / "bad.xml").write_text("<annotation><filename>a.png")
        inputs = [str(tmp_path / "bad.xml")]
    elif case == "bad_number":
        inputs = [write_voc(tmp_path / "a.xml", "a.png", 100, 80, [("tree", "ten", 1, 5, 5)])]
    elif case == "csv_header":
        (tmp_path / "b.csv").write_text("image_path,xmin,ymin,xmax,ymax\na.png,1,1,2,2\n")
        fmt, inputs = "csv", [str(tmp_path / "b.csv")]
    elif case == "csv_empty":
        (tmp_path / "boxes.csv").write_text("image_path,xmin,ymin,xmax,ymax,label\n")
        fmt, inputs = "csv", [str(tmp_path / "boxes.csv")]
    elif case.startswith("yolo"):
        fmt, inputs, classes = "yolo", [str(labels)], "car,person"
        (labels / "a.txt").write_text("3 0.5 0.5 0.1 0.1\n")
        if case == "yolo_orphan":
            (labels / "a.txt").unlink()
            (labels / "z.txt").write_text("0 0.5 0.5 0.1 0.1\n")
        if case == "yolo_classes":
            classes = None
    else:
        inputs = [str(tmp_path / "nothing.xml")]
    out = tmp_path / "out.json"
    tool = load_script("tools/convert_annotations.py")
    argv = ["--from", fmt, "--input", *inputs, "--image-root", str(images), "--output", str(out)]
    with pytest.raises(SystemExit) as error:
        tool.main(argv + (["--classes", classes] if classes else []))
    assert message in str(error.value)
    assert not out.exists() and not [f for f in os.listdir(tmp_path) if f.startswith(".tmp")]


def test_tool_writes_what_it_says(tmp_path, images, capsys):
    xml = write_voc(tmp_path / "a.xml", "a.png", 100, 80, [("tree", -3, 1, 10, 10)])
    out = tmp_path / "sub" / "train.json"
    load_script("tools/convert_annotations.py").main(
        ["--from", "voc", "--input", xml, "--image-root", str(images), "--output", str(out)]
    )
    assert "1 images, 1 boxes of 1 classes; 1 boxes clipped" in capsys.readouterr().out
    assert json.loads(out.read_text())["annotations"][0]["bbox"] == [0, 1, 10, 9]


def test_neon_voc_and_csv_agree():
    root = neon_trees_or_skip()
    images = os.path.join(root, "images")
    annotations = os.path.join(root, "annotations")
    val = "2019_YELL_2_541000_4977000_image_crop"
    voc = convert_annotations("voc", [os.path.join(annotations, val + ".xml")], images, "Tree")
    csv = convert_annotations("csv", [os.path.join(annotations, "example.csv")], images, "Tree")
    assert (
        voc.coco["images"]
        == csv.coco["images"]
        == [{"id": 1, "file_name": val + ".png", "width": 1249, "height": 1035}]
    )
    assert len(voc.coco["annotations"]) == 279 and voc.clipped == 0 and not voc.dropped
    # example.csv's crowns are some of the validation image's, each drawn about alike
    voc_boxes, csv_boxes = (
        box_convert(torch.tensor([a["bbox"] for a in c.coco["annotations"]]), "xywh", "xyxy")
        for c in (voc, csv)
    )
    assert 0 < len(csv_boxes) < len(voc_boxes)
    assert box_iou(csv_boxes, voc_boxes).max(dim=1).values.min() > 0.5
