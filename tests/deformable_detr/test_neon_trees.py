"""tools/datasets/prepare_neon_trees.py and deformable_detr.data.neon_trees: only the
two Yellowstone images and their annotations leave the wheel, checked by sha256,
converted to COCO JSON; a second run does nothing; an altered file is fetched again
and a wrong wheel is an error. On a wheel built here (no download), and on the
prepared dataset when it is there."""

import hashlib
import io
import json
import os
import zipfile

import pytest
from PIL import Image

from deformable_detr.data import neon_trees
from deformable_detr.data.coco_json import DatasetError, coco_json_dataset

from ..scripts import load_script
from .real_images import neon_trees_or_skip

OTHER_SITE = "OSBS_029.png"  # stands for the wheel's other annotated images


def _png(width, height, colour) -> bytes:
    buffer = io.BytesIO()
    Image.new("RGB", (width, height), colour).save(buffer, "PNG")
    return buffer.getvalue()


def _voc(file_name, boxes) -> bytes:
    objects = "".join(
        f"<object><name>Tree</name><bndbox><xmin>{a}</xmin><ymin>{b}</ymin><xmax>{c}</xmax>"
        f"<ymax>{d}</ymax></bndbox></object>"
        for a, b, c, d in boxes
    )
    return f"<annotation><filename>{file_name}</filename>{objects}</annotation>".encode()


@pytest.fixture
def fake_wheel(tmp_path, monkeypatch):
    """A wheel with the five files' names (small generated content, whose hashes
    replace the real ones) and one image of another site."""
    train, val = neon_trees.TRAIN_IMAGE, neon_trees.VAL_IMAGE
    contents = {
        f"{train}.png": _png(60, 50, (0, 90, 0)),
        f"{train}.xml": _voc(f"{train}.png", [(1, 2, 11, 12), (20, 20, 70, 30)]),
        f"{val}.png": _png(40, 30, (0, 80, 0)),
        f"{val}.xml": _voc(f"{val}.png", [(5, 5, 15, 15)]),
        "example.csv": b"image_path,xmin,ymin,xmax,ymax,label\n",
    }
    files = {
        name: (neon_trees.FILES[name][0], hashlib.sha256(data).hexdigest(), len(data))
        for name, data in contents.items()
    }
    monkeypatch.setattr(neon_trees, "FILES", files)
    wheel = tmp_path / "deepforest-2.1.0-py3-none-any.whl"
    with zipfile.ZipFile(wheel, "w") as archive:
        for name, data in {**contents, OTHER_SITE: _png(8, 8, (1, 1, 1))}.items():
            archive.writestr(neon_trees.MEMBER_DIR + name, data)
    return str(wheel)


def test_prepares_once_and_only_the_two_images(tmp_path, fake_wheel):
    root = str(tmp_path / "neon_trees")
    said = []
    jsons = neon_trees.prepare_neon_trees(root, fake_wheel, log=said.append)
    assert sorted(os.listdir(os.path.join(root, "images"))) == sorted(
        f"{stem}.png" for stem in neon_trees.SPLITS.values()
    )
    assert OTHER_SITE not in str(list(os.walk(root)))
    assert "extracted and verified (sha256) 5 files" in "\n".join(said)
    # boxes leaving the 60x50 image are clipped, as the converters do
    train = json.load(open(jsons["train"]))
    assert [a["bbox"] for a in train["annotations"]] == [[1, 2, 10, 10], [20, 20, 40, 10]]
    assert train["categories"] == [{"id": 1, "name": "Tree"}]
    dicts = coco_json_dataset("neon_test_val", jsons["val"], os.path.join(root, "images"))
    assert len(dicts) == 1 and len(dicts[0]["annotations"]) == 1

    said.clear()
    neon_trees.prepare_neon_trees(root, fake_wheel, log=said.append)
    assert said == [f"{root}: all files present and verified; nothing to do"]

    altered = os.path.join(root, "images", f"{neon_trees.VAL_IMAGE}.png")
    with open(altered, "ab") as f:
        f.write(b"x")
    os.remove(jsons["val"])
    neon_trees.prepare_neon_trees(root, fake_wheel, log=said.append)
    assert f"1 files missing or altered: {neon_trees.VAL_IMAGE}.png" in said[1]
    assert os.path.isfile(jsons["val"])


def test_a_wrong_wheel_is_an_error_and_the_tool_says_it(tmp_path, fake_wheel, monkeypatch):
    name = f"{neon_trees.VAL_IMAGE}.png"
    folder, _, size = neon_trees.FILES[name]
    monkeypatch.setitem(neon_trees.FILES, name, (folder, "0" * 64, size))
    root = str(tmp_path / "neon_trees")
    with pytest.raises(SystemExit) as error:
        load_script("tools/datasets/prepare_neon_trees.py").main(
            ["--root", root, "--wheel", fake_wheel]
        )
    assert f"{name} has sha256" in str(error.value) and f"expected {'0' * 64}" in str(error.value)
    assert not os.path.exists(os.path.join(root, "images", name))
    with pytest.raises(DatasetError, match="not a readable wheel"):
        neon_trees.prepare_neon_trees(root, str(tmp_path / "nothing.whl"), log=lambda _: None)


def test_the_prepared_dataset_is_intact():
    root = neon_trees_or_skip()
    said = []
    neon_trees.prepare_neon_trees(root, log=said.append)  # checks every sha256
    assert said == [f"{root}: all files present and verified; nothing to do"]
    for split, (width, height, boxes) in {
        "train": (2299, 2472, 574),
        "val": (1249, 1035, 279),
    }.items():
        data = json.load(open(os.path.join(root, f"{split}.json")))
        assert [(i["width"], i["height"]) for i in data["images"]] == [(width, height)]
        assert len(data["annotations"]) == boxes
