"""Bad data and a full disk: each is an error that names the file (and the disk),
and warnings reach log.txt; see docs/reliability.md."""

import json
import struct
import zlib

import pytest
import torch
from detectron2.data import DatasetCatalog, MetadataCatalog, detection_utils
from detectron2.data.datasets import register_coco_instances

from deformable_detr import output
from deformable_detr.checkpoint.checkpointer import DetrCheckpointer
from deformable_detr.data import DetrDatasetMapper, detection_dataset_dicts
from deformable_detr.engine.output import DiskFullError

from ..train_net_runs import command, run
from .faulty_train_net import disk_full_open
from .test_faults import FAULTY_TRAIN_NET, SMALL


def test_an_unknown_category_id_names_the_annotation_file(tmp_path, request):
    path = tmp_path / "instances.json"
    image = {"id": 1, "file_name": "a.jpg", "width": 10, "height": 10}
    annotation = {"id": 1, "image_id": 1, "category_id": 7, "bbox": [1, 1, 4, 4], "area": 16}
    categories = [{"id": 1, "name": "shape"}]
    path.write_text(
        json.dumps({"images": [image], "annotations": [annotation], "categories": categories})
    )
    name = f"unknown_category_{request.node.name}"
    register_coco_instances(name, {}, str(path), str(tmp_path))
    try:
        with pytest.raises(ValueError) as info:
            detection_dataset_dicts(name)
    finally:
        DatasetCatalog.remove(name)
        MetadataCatalog.remove(name)
    message = str(info.value)
    assert message.startswith(f"{path}: Encountered category_id=7 but this id does not exist")
    assert "\n" not in message


def _png_header(path, width, height):
    """A PNG file that announces a width x height RGB image (and holds no pixels)."""

    def chunk(kind, data):
        return (
            struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))
        )

    header = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    path.write_bytes(b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header) + chunk(b"IEND", b""))


@pytest.mark.parametrize("cause", ["decompression-bomb", "out-of-memory"])
def test_an_image_too_large_for_memory_is_named(cause, tmp_path, monkeypatch):
    path = tmp_path / "huge.png"
    _png_header(path, 100_000, 100_000)
    if cause == "out-of-memory":  # what numpy raises for an image that passes PIL's check
        monkeypatch.setattr("PIL.Image.MAX_IMAGE_PIXELS", None)

        def out_of_memory(image, format):
            raise MemoryError("Unable to allocate 27.9 TiB for an array")

        monkeypatch.setattr(detection_utils, "convert_PIL_to_numpy", out_of_memory)
    mapper = DetrDatasetMapper(
        is_train=True, augmentation=[], augmentation_with_crop=None, image_format="RGB"
    )
    with pytest.raises(MemoryError, match=f"image {path} is too large to load"):
        mapper({"file_name": str(path), "height": 100_000, "width": 100_000, "annotations": []})


def test_a_full_disk_is_named_and_the_old_checkpoint_stays(tmp_path, monkeypatch):
    model = torch.nn.Linear(300, 300)
    checkpointer = DetrCheckpointer(model, str(tmp_path))
    checkpointer.save("model_final", iteration=0)
    before = (tmp_path / "model_final.pth").read_bytes()
    monkeypatch.setattr(output, "open", disk_full_open, raising=False)
    with pytest.raises(DiskFullError) as info:
        checkpointer.save("model_final", iteration=1)
    assert str(info.value) == (
        f"cannot write {tmp_path / 'model_final.pth'}: the disk of {tmp_path} is full (No space "
        "left on device); its previous version is intact; free some space, then continue with "
        "--resume"
    )
    assert (tmp_path / "model_final.pth").read_bytes() == before
    assert sorted(p.name for p in tmp_path.iterdir()) == ["last_checkpoint", "model_final.pth"]


@pytest.mark.slow
def test_training_logs_dropped_boxes_to_log_txt_and_names_a_full_disk(tmp_path, synthetic_datasets):
    output_dir = tmp_path / "output"
    args = command(
        *SMALL,
        f"train.output_dir={output_dir}",
        "train.max_iter=1",
        script=FAULTY_TRAIN_NET,
    )
    log = run(args, synthetic_datasets, succeeds=False, FAULT="degenerate-box,disk-full")
    assert log.rstrip().splitlines()[-1] == (
        f"error: cannot write {output_dir / 'model_final.pth'}: the disk of {output_dir} is full "
        "(No space left on device); free some space, then continue with --resume"
    )
    dropped = "1 dropped for zero width or height"
    assert dropped in log and dropped in (output_dir / "log.txt").read_text()
    assert not list(output_dir.glob("*.pth")) and not list(output_dir.glob(".*.tmp-*"))
