"""Runs tools/lazyconfig_train_net.py (same arguments) with one fault injected,
named by the environment variable FAULT:

- ``nan-image``: every image the training mapper returns is float and all NaN.
- ``stall-in-final-save``: writing model_final.pth stops halfway; the process
  creates the file $STALLED and waits to be killed.
- ``disk-full``: the disk fills up while a checkpoint is written (the write
  fails with ENOSPC, as the operating system's would).
- ``degenerate-box``: the first training image gets one more box, of zero width.

Several faults: FAULT=a,b.
"""

import errno
import io
import os
import runpy
import sys
import time
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[2]


def nan_images():
    from deformable_detr.data.dataset_mapper import DetrDatasetMapper

    map_record = DetrDatasetMapper.__call__

    def mapped_with_nan_image(self, dataset_dict):
        result = map_record(self, dataset_dict)
        result["image"] = torch.full(result["image"].shape, float("nan"))
        return result

    DetrDatasetMapper.__call__ = mapped_with_nan_image


def stall_in_final_save():
    save = torch.save

    def half_save_then_stall(data, f, *args, **kwargs):
        if "model_final.pth" not in getattr(f, "name", str(f)):
            return save(data, f, *args, **kwargs)
        save(data, f, *args, **kwargs)
        f.truncate(f.tell() // 2)
        f.flush()
        os.fsync(f.fileno())
        Path(os.environ["STALLED"]).touch()
        time.sleep(600)

    torch.save = half_save_then_stall


class _FillingFile(io.FileIO):
    """A file on a disk with `room` bytes left: writes beyond fail with ENOSPC."""

    room = 1000

    def write(self, data) -> int:
        if self.tell() + len(data) > self.room:
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
        return super().write(data)


def disk_full_open(file, mode="r", *args, **kwargs):
    """open(), with checkpoint files (.pth) written to a full disk."""
    if ".pth" in str(file) and "w" in mode:
        return io.BufferedWriter(_FillingFile(file, mode.replace("b", "")))
    return open(file, mode, *args, **kwargs)


def disk_full():
    from deformable_detr import output

    output.open = disk_full_open


def degenerate_box():
    from detectron2.structures import BoxMode

    from deformable_detr import data

    clean_boxes = data.clean_boxes

    def with_a_degenerate_box(dataset_dicts, *args, **kwargs):
        box = {"bbox": [5.0, 5.0, 5.0, 20.0], "bbox_mode": BoxMode.XYXY_ABS, "category_id": 0}
        first = dataset_dicts[0]
        first["annotations"] = [*first.get("annotations", []), box]
        return clean_boxes(dataset_dicts, *args, **kwargs)

    data.clean_boxes = with_a_degenerate_box  # the configs import it from there


FAULTS = {
    "nan-image": nan_images,
    "stall-in-final-save": stall_in_final_save,
    "disk-full": disk_full,
    "degenerate-box": degenerate_box,
}

if __name__ == "__main__":
    for fault in os.environ["FAULT"].split(","):
        FAULTS[fault]()
    sys.argv[0] = str(ROOT / "tools" / "lazyconfig_train_net.py")
    runpy.run_path(sys.argv[0], run_name="__main__")
