"""The tree-crown experiment (tools/tree_crowns.py, docs/real_images.md): Faster
R-CNN + FPN and Deformable DETR trained on the NEON training image's tiles from one
backbone pretrained on its crown crops, evaluated on the whole validation image by
sliced inference (COCO AP and DeepForest's box precision and recall), with a second
seed for the run-to-run spread and one run without the pretraining."""

import os
from typing import Dict, List, Sequence

import cv2
import numpy as np
import torch
from detectron2.config import instantiate
from detectron2.data.detection_utils import read_image
from detectron2.structures import BoxMode

from ..config.build import load_config
from ..data.neon_trees import prepare_neon_trees
from ..data.tiling import tile_coco_dataset
from ..modeling.sliced_inference import with_sliced_inference
from .measure import trained_model
from .plan import Contestant, Plan

__all__ = ["TREE_CROWNS", "draw_predictions", "prepare_data", "seed_summary"]

_FRCNN = "neon_trees/faster_rcnn_fpn.py"
_DDETR = "neon_trees/deformable_detr.py"
_TWO_STAGE = "neon_trees/deformable_detr_two_stage.py"
SEED_1 = ("train.seed=1",)
SUMMARY_METRICS = ("AP", "AP50", "AP75", "APs", "APm", "precision", "recall")

TREE_CROWNS = Plan(
    contestants=(
        Contestant("faster_rcnn_fpn", "Faster R-CNN + FPN", _FRCNN),
        Contestant("deformable_detr", "Deformable DETR", _DDETR),
        Contestant("deformable_detr_two_stage", "Deformable DETR, two-stage", _TWO_STAGE),
        Contestant("faster_rcnn_fpn_seed1", "Faster R-CNN + FPN (seed 1)", _FRCNN, SEED_1),
        Contestant("deformable_detr_seed1", "Deformable DETR (seed 1)", _DDETR, SEED_1),
        Contestant(
            "deformable_detr_two_stage_seed1",
            "Deformable DETR, two-stage (seed 1)",
            _TWO_STAGE,
            SEED_1,
        ),
        Contestant(
            "deformable_detr_two_stage_scratch",
            "Deformable DETR, two-stage, backbone not pretrained",
            _TWO_STAGE,
            ("train.init_checkpoint=",),
            pretrained=False,
        ),
    ),
    pretraining_config=_DDETR,
)


def prepare_data(configs_dir: str) -> None:
    """The NEON images (downloaded and checked unless present) and the training tiles
    of the experiment's base config (written unless present)."""
    prepare_neon_trees()
    cfg = load_config(os.path.join(configs_dir, "neon_trees", "base.py"))
    tiles = cfg.dataloader.train.dataset
    if os.path.exists(tiles.json_file):
        print(f"[trees] training tiles: {tiles.json_file} (exist, not rewritten)", flush=True)
        return
    root = os.path.dirname(cfg.dataloader.test.dataset.json_file)
    tile_coco_dataset(
        os.path.join(root, "train.json"),
        cfg.dataloader.test.dataset.image_root,
        os.path.dirname(tiles.json_file),
        output_name=os.path.basename(tiles.json_file),
        **cfg.TILING,
    )
    print(f"[trees] training tiles written: {tiles.json_file}", flush=True)


@torch.no_grad()
def _predictions(cfg, run_dir: str, record: Dict, score_threshold: float) -> np.ndarray:
    """(N, 4) XYXY boxes the run's final model finds on the record's image by sliced
    inference, scoring at least score_threshold."""
    model = with_sliced_inference(trained_model(cfg, run_dir), cfg)
    image = torch.as_tensor(read_image(record["file_name"], format="RGB").transpose(2, 0, 1))
    inputs = {"image": image, "height": record["height"], "width": record["width"]}
    inputs["file_name"] = record["file_name"]
    instances = model([inputs])[0]["instances"].to("cpu")
    return instances.pred_boxes.tensor[instances.scores >= score_threshold].numpy()


def draw_predictions(
    configs_dir: str,
    output_dir: str,
    contestants: Sequence[Contestant],
    path: str,
    score_threshold: float = 0.3,
) -> List[int]:
    """Writes to `path` the validation image once per contestant (side by side), with
    the true crowns (green) and the predictions scoring at least score_threshold
    (red, drawn over them). Returns the number of predictions drawn per contestant."""
    panels, counts = [], []
    for contestant in contestants:
        run_dir = os.path.join(output_dir, "runs", contestant.name)
        cfg = load_config(os.path.join(configs_dir, contestant.config), list(contestant.overrides))
        record = instantiate(cfg.dataloader.test.dataset)[0]  # registered by its node
        image = cv2.imread(record["file_name"])
        for a in record["annotations"]:
            x0, y0, x1, y1 = (
                int(round(v)) for v in BoxMode.convert(a["bbox"], a["bbox_mode"], BoxMode.XYXY_ABS)
            )
            cv2.rectangle(image, (x0, y0), (x1, y1), (0, 200, 0), 2)
        boxes = _predictions(cfg, run_dir, record, score_threshold)
        for x0, y0, x1, y1 in boxes.round().astype(int):
            cv2.rectangle(image, (x0, y0), (x1, y1), (0, 0, 255), 2)
        cv2.putText(
            image, contestant.label, (10, 40), cv2.FONT_HERSHEY_SIMPLEX, 1.2, (255, 255, 255), 3
        )
        panels.append(image)
        counts.append(len(boxes))
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    cv2.imwrite(path, np.concatenate(panels, axis=1), [cv2.IMWRITE_JPEG_QUALITY, 85])
    return counts


def seed_summary(runs: Sequence[Dict]) -> str:
    """A Markdown table of the final evaluations: per model, the mean over its seeds
    (runs named NAME and NAME_seed1) with both values, so the spread shows."""
    by_name = {run["name"]: run for run in runs if run["evaluations"]}
    lines = [
        "| model | seeds | " + " | ".join(SUMMARY_METRICS) + " |",
        "|---|---|" + "---|" * len(SUMMARY_METRICS),
    ]
    for run in runs:
        if run["name"].endswith("_seed1") or run["name"] not in by_name:
            continue
        seeds = [by_name[n] for n in (run["name"], f"{run['name']}_seed1") if n in by_name]
        cells = []
        for metric in SUMMARY_METRICS:
            values = [seed["evaluations"][-1].get(metric, float("nan")) for seed in seeds]
            mean = sum(values) / len(values)
            cells.append(
                f"{mean:.1f}"
                + (f" ({', '.join(f'{v:.1f}' for v in values)})" if len(values) > 1 else "")
            )
        lines.append(f"| {run['label']} | {len(seeds)} | " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"
