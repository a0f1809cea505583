"""Evaluators beside detectron2's COCOEvaluator: measures that users of other tools
report, computed on the same predictions."""

from .box_precision_recall import BoxPrecisionRecallEvaluator, match_boxes

__all__ = ["BoxPrecisionRecallEvaluator", "match_boxes"]
