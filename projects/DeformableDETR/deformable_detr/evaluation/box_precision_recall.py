"""DeepForest's box measure (``deepforest.evaluate``), so that results compare with
what users of that tool report: in each image the predictions scoring at least
`score_threshold` are matched one-to-one to the true boxes, maximising the total
intersection area (Hungarian matching); a pair is a true positive when its IoU is
above `iou_threshold` (0.4 in DeepForest). Recall is true positives / true boxes,
precision true positives / predictions, each averaged over the images (an image
without predictions counts 0 recall and no precision), class-agnostic."""

import logging
from typing import Dict, List

import numpy as np
import torch
from detectron2.data import DatasetCatalog
from detectron2.evaluation import DatasetEvaluator
from detectron2.structures import Boxes, BoxMode, pairwise_iou
from detectron2.structures.boxes import pairwise_intersection
from detectron2.utils import comm
from scipy.optimize import linear_sum_assignment

__all__ = ["BoxPrecisionRecallEvaluator", "match_boxes"]

RESULTS_KEY = "box_pr"


def match_boxes(true_boxes: torch.Tensor, predicted_boxes: torch.Tensor) -> torch.Tensor:
    """IoUs (M,) of the one-to-one matching of predicted_boxes (P, 4) to true_boxes
    (T, 4), both XYXY, that maximises the total intersection area; M = min(T, P) pairs
    at most (pairs that do not intersect are left out)."""
    if len(true_boxes) == 0 or len(predicted_boxes) == 0:
        return torch.zeros(0)
    true, predicted = Boxes(true_boxes.double()), Boxes(predicted_boxes.double())
    intersection = pairwise_intersection(true, predicted).numpy()
    rows, cols = linear_sum_assignment(intersection, maximize=True)
    keep = intersection[rows, cols] > 0
    return pairwise_iou(true, predicted)[rows[keep], cols[keep]].float()


class BoxPrecisionRecallEvaluator(DatasetEvaluator):
    """Box precision and recall (in %) of a registered dataset's predictions, as
    DeepForest measures them (see the module docstring); results under "box_pr":
    precision, recall, and the thresholds."""

    def __init__(self, dataset_name: str, iou_threshold: float = 0.4, score_threshold: float = 0.1):
        self._dataset_name = dataset_name
        self._iou_threshold = iou_threshold
        self._score_threshold = score_threshold
        self._true_boxes = None
        self.reset()

    def reset(self) -> None:
        self._per_image: List[Dict] = []

    def true_boxes(self, image_id) -> torch.Tensor:
        """(T, 4) XYXY true boxes of one image (crowd boxes left out)."""
        if self._true_boxes is None:
            self._true_boxes = {
                record["image_id"]: torch.tensor(
                    [
                        BoxMode.convert(a["bbox"], a["bbox_mode"], BoxMode.XYXY_ABS)
                        for a in record.get("annotations", [])
                        if not a.get("iscrowd", 0)
                    ],
                    dtype=torch.float64,
                ).reshape(-1, 4)
                for record in DatasetCatalog.get(self._dataset_name)
            }
        return self._true_boxes[image_id]

    def process(self, inputs, outputs) -> None:
        for x, output in zip(inputs, outputs):
            instances = output["instances"].to("cpu")
            predicted = instances.pred_boxes.tensor[instances.scores >= self._score_threshold]
            true = self.true_boxes(x["image_id"])
            ious = match_boxes(true, predicted)
            self._per_image.append(
                {
                    "true": len(true),
                    "predicted": len(predicted),
                    "matched": int((ious > self._iou_threshold).sum()),
                }
            )

    def evaluate(self) -> Dict[str, Dict[str, float]]:
        per_image = [r for part in comm.gather(self._per_image) for r in part]
        if not comm.is_main_process():
            return {}
        with_truth = [r for r in per_image if r["true"] > 0]
        if not with_truth:
            logging.getLogger(__name__).warning(
                f"{self._dataset_name}: no image with true boxes; no box precision/recall"
            )
            return {}
        recall = np.mean([r["matched"] / r["true"] for r in with_truth])
        predicted = [r for r in with_truth if r["predicted"] > 0]
        precision = (
            np.mean([r["matched"] / r["predicted"] for r in predicted]) if predicted else 0.0
        )
        return {
            RESULTS_KEY: {
                "precision": 100.0 * float(precision),
                "recall": 100.0 * float(recall),
                "iou_threshold": self._iou_threshold,
                "score_threshold": self._score_threshold,
            }
        }
