"""NEON tree crowns: two airborne RGB images (10 cm per pixel) of Yellowstone with
hand-drawn crown boxes, from the `deepforest` wheel (MIT) on the package index.

prepare_neon_trees() downloads the wheel with pip (not installed: nothing of it is
imported), extracts only the two YELL images, their Pascal VOC XML files and
example.csv, checks their sha256, and converts the XML files to COCO JSON:

    $D2EXT_DATASETS/neon_trees/
        images/2019_YELL_2_528000_4978000_image_crop2.png   training (2299x2472)
        images/2019_YELL_2_541000_4977000_image_crop.png    validation (1249x1035)
        annotations/*.xml, annotations/example.csv
        train.json, val.json                                class "Tree", id 1

The wheel's other annotated images (other sites) are left out on purpose: they are
kept for a later cross-site check. Running it again does nothing when every file is
there and intact.
"""

import hashlib
import os
import subprocess
import sys
import tempfile
import zipfile
from typing import Callable, Dict, List, Optional

from .coco_json import DatasetError
from .converters import read_voc, to_coco, write_coco_json
from .synthetic import default_root

__all__ = ["FILES", "SPLITS", "WHEEL", "prepare_neon_trees", "neon_trees_root"]

WHEEL = "deepforest==2.1.0"
MEMBER_DIR = "deepforest/data/"
TRAIN_IMAGE = "2019_YELL_2_528000_4978000_image_crop2"
VAL_IMAGE = "2019_YELL_2_541000_4977000_image_crop"
# file: (folder under the root, sha256, size in bytes)
FILES: Dict[str, tuple] = {
    f"{TRAIN_IMAGE}.png": (
        "images", "a9bdb0f4447fdd899d22f567e0e20ba8320c5413b2ad0cd0ac8d9f3b6e0f9767", 15333493
    ),
    f"{TRAIN_IMAGE}.xml": (
        "annotations", "bd431af6a5086d721eb731b22f5ea28cd8a8eab06883efc1c665391acbc68e11", 193359
    ),
    f"{VAL_IMAGE}.png": (
        "images", "178e58a23cc2642226a364a30f71bd9258ddc1b012c826f12250914a90c7a131", 2889166
    ),
    f"{VAL_IMAGE}.xml": (
        "annotations", "cefe4b96888bacbf8af1674f000082e549aa707aa6590d545effb23e43f26631", 93452
    ),
    "example.csv": (
        "annotations", "f3f93782f49bf126a84b014bd71aee9cc6358e36f203a0559c88bc98e4678d9c", 5025
    ),
}  # fmt: skip
SPLITS = {"train": TRAIN_IMAGE, "val": VAL_IMAGE}
CLASSES = [{"id": 1, "name": "Tree"}]


def neon_trees_root() -> str:
    """$D2EXT_DATASETS/neon_trees (see synthetic.default_root)."""
    return default_root("neon_trees")


def _sha256(path: str) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


def _intact(root: str, name: str) -> bool:
    folder, sha256, size = FILES[name]
    path = os.path.join(root, folder, name)
    return os.path.isfile(path) and os.path.getsize(path) == size and _sha256(path) == sha256


def download_wheel(folder: str) -> str:
    """The deepforest wheel downloaded into `folder` by pip (no install, no
    dependencies); returns its path."""
    command = [sys.executable, "-m", "pip", "download", "--no-deps", "--only-binary=:all:"]
    result = subprocess.run(
        command + ["--dest", folder, WHEEL], capture_output=True, text=True, check=False
    )
    wheels = [f for f in os.listdir(folder) if f.endswith(".whl")]
    if result.returncode != 0 or len(wheels) != 1:
        raise DatasetError(
            f"pip could not download {WHEEL} (exit {result.returncode}): "
            f"{result.stderr.strip()[-500:]}; download it yourself (pip download --no-deps "
            f"{WHEEL}) and give it with --wheel"
        )
    return os.path.join(folder, wheels[0])


def _extract(wheel: str, names: List[str], root: str) -> None:
    """Extracts `names` from the wheel's data folder, each checked before it is
    renamed into place."""
    try:
        archive = zipfile.ZipFile(wheel)
    except (OSError, zipfile.BadZipFile) as e:
        raise DatasetError(f"{wheel}: not a readable wheel ({e})") from None
    with archive:
        for name in names:
            folder, sha256, size = FILES[name]
            try:
                data = archive.read(MEMBER_DIR + name)
            except KeyError:
                raise DatasetError(f"{wheel}: has no {MEMBER_DIR}{name}; is it {WHEEL}?") from None
            found = hashlib.sha256(data).hexdigest()
            if found != sha256 or len(data) != size:
                raise DatasetError(
                    f"{wheel}: {name} has sha256 {found} ({len(data)} bytes); expected "
                    f"{sha256} ({size} bytes)"
                )
            os.makedirs(os.path.join(root, folder), exist_ok=True)
            path = os.path.join(root, folder, name)
            with open(path + ".tmp", "wb") as f:
                f.write(data)
            os.replace(path + ".tmp", path)


def prepare_neon_trees(
    root: Optional[str] = None,
    wheel: Optional[str] = None,
    log: Callable[[str], None] = print,
) -> Dict[str, str]:
    """Brings `root` (default neon_trees_root()) to the layout of the module docstring,
    downloading the wheel only when a file is missing or altered (`wheel`: a wheel
    already downloaded). Says what it did through `log`. Returns {split: JSON path}."""
    root = root or neon_trees_root()
    missing = [name for name in FILES if not _intact(root, name)]
    if missing:
        log(f"{root}: {len(missing)} files missing or altered: {', '.join(missing)}")
        with tempfile.TemporaryDirectory() as tmp:
            if wheel is None:
                log(f"downloading {WHEEL} (the wheel only, not installed)")
                wheel = download_wheel(tmp)
            _extract(wheel, missing, root)
        log(f"extracted and verified (sha256) {len(missing)} files from {os.path.basename(wheel)}")
    written = []
    jsons = {split: os.path.join(root, f"{split}.json") for split in SPLITS}
    image_root = os.path.join(root, "images")
    for split, stem in SPLITS.items():
        if os.path.isfile(jsons[split]) and not missing:
            continue
        xml_file = os.path.join(root, "annotations", f"{stem}.xml")
        conversion = to_coco(read_voc([xml_file], image_root), CLASSES)
        write_coco_json(conversion.coco, jsons[split], image_root)
        log(f"wrote {jsons[split]}: {conversion.summary()}")
        written.append(split)
    if not missing and not written:
        log(f"{root}: all files present and verified; nothing to do")
    return jsons
