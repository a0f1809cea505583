"""Weighted box fusion (Solovyev, Wang and Gabruseva, "Weighted boxes fusion:
ensembling boxes from different object detection models", 2021): the detections
of several views of one image (test-time augmentations) merged per class, each
group of repeats of an object becoming one box whose corners are the
score-weighted mean of theirs."""

from typing import Tuple

import torch
from torchvision.ops import box_iou

__all__ = ["weighted_boxes_fusion"]


def weighted_boxes_fusion(
    boxes: torch.Tensor,
    scores: torch.Tensor,
    classes: torch.Tensor,
    num_views: int,
    iou_threshold: float,
) -> Tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Fuses the detections of `num_views` views of one image.

    Boxes are taken by descending score; each joins the fused box of its class it
    overlaps most, if that IoU exceeds `iou_threshold`, else starts a new one. A
    fused box is the score-weighted mean of its members; its score is their mean
    score times min(members, num_views) / num_views, so an object that only some
    views found counts less.

    Args:
        boxes: (K, 4) XYXY; scores: (K,); classes: (K,) int, of all views together.

    Returns:
        (boxes (F, 4), scores (F,), classes (F,)) of the fused detections, by
        descending score.
    """
    if num_views < 1:
        raise ValueError(f"num_views={num_views}; expected at least 1")
    fused_boxes, fused_scores, fused_classes = [], [], []
    for cls in classes.unique():
        of_class = classes == cls
        order = scores[of_class].argsort(descending=True)
        cls_boxes, cls_scores = boxes[of_class][order], scores[of_class][order]
        weighted_sums = torch.zeros(0, 4, dtype=boxes.dtype)
        score_sums, counts = [], []
        fused = torch.zeros(0, 4, dtype=boxes.dtype)
        for box, score in zip(cls_boxes, cls_scores):
            if len(fused):
                iou = box_iou(box[None], fused)[0]
                best = int(iou.argmax())
                if iou[best] > iou_threshold:
                    weighted_sums[best] += score * box
                    score_sums[best] += score
                    counts[best] += 1
                    fused[best] = weighted_sums[best] / score_sums[best]
                    continue
            weighted_sums = torch.cat([weighted_sums, (score * box)[None]])
            score_sums.append(score.clone())
            counts.append(1)
            fused = torch.cat([fused, box[None]])
        counts = torch.tensor(counts, dtype=scores.dtype)
        mean_scores = torch.stack(score_sums) / counts
        fused_boxes.append(fused)
        fused_scores.append(mean_scores * counts.clamp(max=num_views) / num_views)
        fused_classes.append(torch.full((len(fused),), int(cls), dtype=classes.dtype))
    if not fused_boxes:
        return boxes[:0], scores[:0], classes[:0]
    boxes, scores, classes = (
        torch.cat(fused_boxes),
        torch.cat(fused_scores),
        torch.cat(fused_classes),
    )
    order = scores.argsort(descending=True, stable=True)
    return boxes[order], scores[order], classes[order]
