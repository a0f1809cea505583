"""Runs tools/lazyconfig_train_net.py (same arguments) with one fault injected,
named by the environment variable FAULT:

- ``nan-image``: every image the training mapper returns is float and all NaN.
- ``stall-in-final-save``: writing model_final.pth stops halfway; the process
  creates the file $STALLED and waits to be killed.
"""

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


if __name__ == "__main__":
    {"nan-image": nan_images, "stall-in-final-save": stall_in_final_save}[os.environ["FAULT"]]()
    sys.argv[0] = str(ROOT / "tools" / "lazyconfig_train_net.py")
    runpy.run_path(sys.argv[0], run_name="__main__")
