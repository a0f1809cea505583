"""Annotations in the formats people have (Pascal VOC XML, CSV rows, YOLO text
files) converted to a COCO-format JSON that configs/custom/ trains on unchanged.

Boxes leaving their image are clipped to it (counted); boxes without area after
that, or inverted, are dropped (counted, with their file named). Class ids follow
the class list given (names in order, ids 1..n, or a COCO JSON's categories with
their ids); a label missing from it is an error listing every such label. Images
are opened to read their size: a missing or unreadable one is an error naming it.
The JSON is checked as training would check it (coco_json.check_coco_json) and
written atomically, so an error writes nothing.

    data = convert_annotations("voc", ["a.xml", "b.xml"], image_root="images/")
    write_coco_json(data.coco, "train.json", "images/")
"""

import csv
import json
import logging
import os
import tempfile
import xml.etree.ElementTree as ET
from collections import defaultdict
from dataclasses import dataclass, field
from typing import Dict, List, Optional, Sequence, Tuple

from PIL import Image

from .coco_json import DatasetError, check_coco_json

__all__ = [
    "FORMATS",
    "Conversion",
    "ImageAnnotations",
    "clean_image_boxes",
    "convert_annotations",
    "parse_classes",
    "read_csv",
    "read_voc",
    "read_yolo",
    "to_coco",
    "write_coco_json",
]

logger = logging.getLogger(__name__)

FORMATS = ("voc", "csv", "yolo")
IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".bmp", ".tif", ".tiff", ".webp")


@dataclass
class ImageAnnotations:
    """One image's boxes: `boxes` XYXY in pixels, `labels` their class names, `source`
    the annotation file they came from."""

    file_name: str
    width: int
    height: int
    boxes: List[Tuple[float, float, float, float]] = field(default_factory=list)
    labels: List[str] = field(default_factory=list)
    source: str = ""


@dataclass
class Conversion:
    """A COCO-format dict and what converting changed: boxes clipped to their image,
    and boxes dropped per annotation file."""

    coco: dict
    clipped: int = 0
    dropped: Dict[str, int] = field(default_factory=dict)

    def summary(self) -> str:
        dropped = sum(self.dropped.values())
        where = ", ".join(f"{f}: {n}" for f, n in sorted(self.dropped.items()))
        return (
            f"{len(self.coco['images'])} images, {len(self.coco['annotations'])} boxes of "
            f"{len(self.coco['categories'])} classes; {self.clipped} boxes clipped to their "
            f"image, {dropped} without area or inverted dropped" + (f" ({where})" if where else "")
        )


def image_size(path: str) -> Tuple[int, int]:
    """(width, height) of an image file, read from its header; an error names a
    missing or unreadable file."""
    if not os.path.isfile(path):
        raise DatasetError(f"{path}: no such image")
    try:
        with Image.open(path) as image:
            image.verify()
            return image.size
    except (OSError, SyntaxError, ValueError) as e:
        raise DatasetError(f"{path}: not a readable image ({e})") from None


def _number(text: Optional[str], what: str, source: str) -> float:
    try:
        return float(text)
    except (TypeError, ValueError):
        raise DatasetError(f"{source}: {what} is {text!r}; expected a number") from None


def read_voc(xml_files: Sequence[str], image_root: str) -> List[ImageAnnotations]:
    """Pascal VOC XML files (one per image: <filename>, <object><name>, <bndbox>
    xmin ymin xmax ymax, taken as pixel coordinates as written). The image is
    <filename> under `image_root`; its size is the file's."""
    records = []
    for xml_file in xml_files:
        try:
            root = ET.parse(xml_file).getroot()
        except (OSError, ET.ParseError) as e:
            raise DatasetError(f"{xml_file}: not a readable VOC XML file ({e})") from None
        file_name = root.findtext("filename")
        if not file_name:
            raise DatasetError(f"{xml_file}: no <filename>; VOC XML names its image there")
        width, height = image_size(os.path.join(image_root, file_name))
        record = ImageAnnotations(file_name, width, height, source=xml_file)
        for obj in root.iter("object"):
            box = obj.find("bndbox")
            if box is None:
                raise DatasetError(f"{xml_file}: an <object> without <bndbox>")
            coords = [
                _number(box.findtext(k), f"<{k}>", xml_file)
                for k in ("xmin", "ymin", "xmax", "ymax")
            ]
            record.boxes.append(tuple(coords))
            record.labels.append((obj.findtext("name") or "").strip())
        records.append(record)
    return records


CSV_COLUMNS = ("image_path", "xmin", "ymin", "xmax", "ymax", "label")


def read_csv(csv_file: str, image_root: str) -> List[ImageAnnotations]:
    """CSV rows `image_path,xmin,ymin,xmax,ymax,label` (DeepForest's format, with that
    header), image_path relative to `image_root`; rows of one image are its boxes."""
    try:
        with open(csv_file, newline="") as f:
            reader = csv.DictReader(f)
            rows = list(reader)
            header = reader.fieldnames or []
    except (OSError, UnicodeDecodeError, csv.Error) as e:
        raise DatasetError(f"{csv_file}: not a readable CSV file ({e})") from None
    missing = [c for c in CSV_COLUMNS if c not in header]
    if missing:
        raise DatasetError(
            f"{csv_file}: no column {', '.join(missing)}; expected a header "
            f"{','.join(CSV_COLUMNS)} and one row per box"
        )
    by_image = defaultdict(list)
    for line, row in enumerate(rows, start=2):
        where = f"{csv_file} line {line}"
        box = tuple(_number(row[k], k, where) for k in CSV_COLUMNS[1:5])
        by_image[row["image_path"]].append((box, row["label"].strip()))
    records = []
    for file_name, boxes in by_image.items():
        width, height = image_size(os.path.join(image_root, file_name))
        record = ImageAnnotations(file_name, width, height, source=csv_file)
        record.boxes = [b for b, _ in boxes]
        record.labels = [label for _, label in boxes]
        records.append(record)
    return records


def read_yolo(label_dir: str, image_root: str, classes: Sequence[str]) -> List[ImageAnnotations]:
    """YOLO text files: for each image of `image_root`, `label_dir/<stem>.txt` with one
    line `class_index cx cy w h` per box (centre and size normalized to [0, 1]),
    class_index into `classes`; an image without a label file has no boxes."""
    if not classes:
        raise DatasetError("YOLO labels are class indices: give the class list (--classes)")
    if not os.path.isdir(image_root):
        raise DatasetError(f"{image_root}: no such image folder")
    images = sorted(f for f in os.listdir(image_root) if f.lower().endswith(IMAGE_EXTENSIONS))
    stems = {os.path.splitext(f)[0] for f in images}
    orphans = sorted(f for f in os.listdir(label_dir) if f.endswith(".txt") and f[:-4] not in stems)
    if orphans:
        raise DatasetError(
            f"{label_dir}: {len(orphans)} label files have no image in {image_root}, "
            f"e.g. {orphans[0]}"
        )
    records = []
    for file_name in images:
        width, height = image_size(os.path.join(image_root, file_name))
        label_file = os.path.join(label_dir, os.path.splitext(file_name)[0] + ".txt")
        record = ImageAnnotations(file_name, width, height, source=label_file)
        if os.path.isfile(label_file):
            with open(label_file) as f:
                lines = [line.split() for line in f if line.strip()]
            for number, values in enumerate(lines, start=1):
                where = f"{label_file} line {number}"
                if len(values) != 5:
                    raise DatasetError(f"{where}: {len(values)} values; expected cls cx cy w h")
                index = values[0]
                if not index.isdigit() or int(index) >= len(classes):
                    raise DatasetError(
                        f"{where}: class index {index}; expected 0..{len(classes) - 1} "
                        f"(of the {len(classes)} classes given)"
                    )
                cx, cy, w, h = (_number(v, "a coordinate", where) for v in values[1:])
                record.boxes.append(
                    ((cx - w / 2) * width, (cy - h / 2) * height, (cx + w / 2) * width,
                     (cy + h / 2) * height)
                )  # fmt: skip
                record.labels.append(classes[int(index)])
        records.append(record)
    return records


def parse_classes(spec: Optional[str]) -> Optional[List[dict]]:
    """COCO categories from `--classes`: a COCO JSON (its categories and ids), a text
    file (one name a line) or comma-separated names (ids 1..n in order); None for None."""
    if not spec:
        return None
    if os.path.isfile(spec):
        if spec.endswith(".json"):
            with open(spec) as f:
                categories = json.load(f).get("categories")
            if not categories:
                raise DatasetError(f"{spec}: no 'categories' to take the classes from")
            return [{"id": c["id"], "name": c["name"]} for c in categories]
        with open(spec) as f:
            names = [line.strip() for line in f if line.strip()]
    else:
        names = [name.strip() for name in spec.split(",") if name.strip()]
    if not names or len(set(names)) != len(names):
        raise DatasetError(f"classes {spec!r}: expected distinct class names, at least one")
    return [{"id": i, "name": name} for i, name in enumerate(names, start=1)]


def clean_image_boxes(record: ImageAnnotations) -> Tuple[list, int, int]:
    """The record's (box, label) pairs with boxes clipped to the image; returns them,
    the number clipped and the number dropped (inverted or without area once clipped)."""
    kept, clipped, dropped = [], 0, 0
    for (x0, y0, x1, y1), label in zip(record.boxes, record.labels):
        if x1 <= x0 or y1 <= y0:
            dropped += 1
            continue
        box = (
            min(max(x0, 0.0), record.width),
            min(max(y0, 0.0), record.height),
            min(max(x1, 0.0), record.width),
            min(max(y1, 0.0), record.height),
        )
        if box[2] <= box[0] or box[3] <= box[1]:
            dropped += 1
            continue
        clipped += box != (x0, y0, x1, y1)
        kept.append((box, label))
    return kept, clipped, dropped


def to_coco(
    records: Sequence[ImageAnnotations], categories: Optional[List[dict]] = None
) -> Conversion:
    """COCO-format dict of `records`; categories None: the labels found, sorted, ids 1..n."""
    labels = sorted({label for r in records for label in r.labels})
    if categories is None:
        categories = [{"id": i, "name": name} for i, name in enumerate(labels, start=1)]
    ids = {c["name"]: c["id"] for c in categories}
    unknown = [label for label in labels if label not in ids]
    if unknown:
        raise DatasetError(
            f"labels {', '.join(repr(u) for u in unknown)} are not among the classes given "
            f"({', '.join(ids)}); add them to the class list or fix the annotations"
        )
    conversion = Conversion({"images": [], "annotations": [], "categories": list(categories)})
    coco = conversion.coco
    for image_id, record in enumerate(records, start=1):
        coco["images"].append(
            {"id": image_id, "file_name": record.file_name, "width": record.width,
             "height": record.height}
        )  # fmt: skip
        kept, clipped, dropped = clean_image_boxes(record)
        conversion.clipped += clipped
        if dropped:
            conversion.dropped[record.source] = conversion.dropped.get(record.source, 0) + dropped
            logger.warning(f"{record.source}: dropped {dropped} inverted or zero-area boxes")
        for (x0, y0, x1, y1), label in kept:
            coco["annotations"].append(
                {"id": len(coco["annotations"]) + 1, "image_id": image_id,
                 "category_id": ids[label], "bbox": [x0, y0, x1 - x0, y1 - y0],
                 "area": (x1 - x0) * (y1 - y0), "iscrowd": 0}
            )  # fmt: skip
    return conversion


def convert_annotations(
    fmt: str,
    inputs: Sequence[str],
    image_root: str,
    classes: Optional[str] = None,
) -> Conversion:
    """Reads `inputs` in format `fmt` ("voc": XML files or folders of them; "csv":
    CSV files; "yolo": one folder of label files) and converts them (see to_coco);
    `classes` as parse_classes takes it."""
    if fmt not in FORMATS:
        raise DatasetError(f"format {fmt!r}; expected one of {', '.join(FORMATS)}")
    for path in inputs:
        if not os.path.exists(path):
            raise DatasetError(f"{path}: no such annotation file or folder")
    categories = parse_classes(classes)
    if fmt == "voc":
        xml_files = []
        for path in inputs:
            if os.path.isdir(path):
                xml_files += sorted(
                    os.path.join(path, f) for f in os.listdir(path) if f.endswith(".xml")
                )
            else:
                xml_files.append(path)
        records = read_voc(xml_files, image_root)
    elif fmt == "csv":
        records = [r for path in inputs for r in read_csv(path, image_root)]
    else:
        if len(inputs) != 1 or not os.path.isdir(inputs[0]):
            raise DatasetError(f"yolo: expected one folder of label files, got {list(inputs)}")
        records = read_yolo(inputs[0], image_root, [c["name"] for c in categories or []])
    if not records:
        raise DatasetError(f"{', '.join(inputs)}: no annotations found")
    return to_coco(records, categories)


def write_coco_json(coco: dict, json_file: str, image_root: str) -> None:
    """Checks `coco` as training would (coco_json.check_coco_json) and writes it to
    `json_file` atomically (a temporary file renamed): an error writes nothing."""
    check_coco_json(coco, json_file, image_root)
    folder = os.path.dirname(os.path.abspath(json_file))
    os.makedirs(folder, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=folder, prefix=".tmp-", suffix=".json")
    try:
        with os.fdopen(fd, "w") as f:
            json.dump(coco, f)
        umask = os.umask(0)
        os.umask(umask)
        os.chmod(tmp, 0o666 & ~umask)  # mkstemp's 0600 otherwise
        os.replace(tmp, json_file)
    except BaseException:
        os.unlink(tmp)
        raise
