"""HungarianMatcher: optimal against brute force over all assignments, exact on
an obvious case, empty images, half-precision inputs, non-finite predictions."""

import itertools
import math
import random

import pytest
import torch

from deformable_detr.modeling.matcher import HungarianMatcher

NUM_CLASSES = 5
COST_CLASS, COST_BBOX, COST_GIOU = 2.0, 5.0, 2.0
ALPHA, GAMMA, EPS = 0.25, 2.0, 1e-8


def _random_boxes(n, gen):
    """(n, 4) valid normalized cxcywh boxes."""
    centers = torch.rand(n, 2, generator=gen) * 0.6 + 0.2
    sizes = torch.rand(n, 2, generator=gen) * 0.35 + 0.05
    return torch.cat([centers, sizes], dim=1)


def _giou(box_a, box_b):
    """GIoU of two cxcywh boxes given as lists of floats, straight from its definition."""
    (acx, acy, aw, ah), (bcx, bcy, bw, bh) = box_a, box_b
    ax0, ay0, ax1, ay1 = acx - aw / 2, acy - ah / 2, acx + aw / 2, acy + ah / 2
    bx0, by0, bx1, by1 = bcx - bw / 2, bcy - bh / 2, bcx + bw / 2, bcy + bh / 2
    inter = max(0.0, min(ax1, bx1) - max(ax0, bx0)) * max(0.0, min(ay1, by1) - max(ay0, by0))
    union = aw * ah + bw * bh - inter
    enclosing = (max(ax1, bx1) - min(ax0, bx0)) * (max(ay1, by1) - min(ay0, by0))
    return inter / union - (enclosing - union) / enclosing


def _pair_cost(logits, box, label, target_box):
    """The matching cost of one query (K logits, a box) and one target, computed with floats."""
    p = 1 / (1 + math.exp(-logits[label]))
    pos = ALPHA * (1 - p) ** GAMMA * -math.log(p + EPS)
    neg = (1 - ALPHA) * p**GAMMA * -math.log(1 - p + EPS)
    l1 = sum(abs(a - b) for a, b in zip(box, target_box))
    return COST_CLASS * (pos - neg) + COST_BBOX * l1 - COST_GIOU * _giou(box, target_box)


def _brute_force_min_cost(cost):
    """Minimum total cost over every one-to-one assignment of min(Q, T) pairs; cost[q][t]."""
    num_queries, num_targets = len(cost), len(cost[0])
    if num_targets <= num_queries:
        return min(
            sum(cost[q][t] for t, q in enumerate(queries))
            for queries in itertools.permutations(range(num_queries), num_targets)
        )
    return min(
        sum(cost[q][t] for q, t in enumerate(targets))
        for targets in itertools.permutations(range(num_targets), num_queries)
    )


@pytest.mark.parametrize("seed", range(40))
def test_total_cost_equals_brute_force_minimum(seed):
    rng = random.Random(seed)
    gen = torch.Generator().manual_seed(seed)
    batch_size = 2
    num_queries = rng.randint(3, 6)
    num_targets = [rng.randint(0, 4) for _ in range(batch_size)]
    outputs = {
        "pred_logits": torch.randn(batch_size, num_queries, NUM_CLASSES, generator=gen) * 2,
        "pred_boxes": torch.stack([_random_boxes(num_queries, gen) for _ in range(batch_size)]),
    }
    targets = [
        {"labels": torch.randint(NUM_CLASSES, (n,), generator=gen), "boxes": _random_boxes(n, gen)}
        for n in num_targets
    ]

    matches = HungarianMatcher(COST_CLASS, COST_BBOX, COST_GIOU, ALPHA, GAMMA)(outputs, targets)

    assert len(matches) == batch_size
    for image, ((query_indices, target_indices), target) in enumerate(zip(matches, targets)):
        num_pairs = min(num_queries, len(target["labels"]))
        assert query_indices.dtype == target_indices.dtype == torch.int64
        assert len(query_indices) == len(target_indices) == num_pairs
        assert len(set(query_indices.tolist())) == len(set(target_indices.tolist())) == num_pairs
        if num_pairs == 0:
            continue
        logits = outputs["pred_logits"][image].double().tolist()
        boxes = outputs["pred_boxes"][image].double().tolist()
        labels = target["labels"].tolist()
        target_boxes = target["boxes"].double().tolist()
        cost = [
            [
                _pair_cost(logits[q], boxes[q], labels[t], target_boxes[t])
                for t in range(len(labels))
            ]
            for q in range(num_queries)
        ]
        matched_cost = sum(
            cost[q][t] for q, t in zip(query_indices.tolist(), target_indices.tolist())
        )
        assert matched_cost == pytest.approx(_brute_force_min_cost(cost), abs=1e-4)


def test_queries_equal_to_targets_are_matched_to_them():
    target_boxes = torch.tensor([[0.3, 0.3, 0.2, 0.2], [0.7, 0.6, 0.3, 0.4]])
    labels = torch.tensor([4, 1])
    pred_boxes = torch.tensor(
        [[0.5, 0.5, 0.1, 0.1], [0.7, 0.6, 0.3, 0.4], [0.2, 0.8, 0.1, 0.2], [0.3, 0.3, 0.2, 0.2]]
    )
    pred_logits = torch.full((4, NUM_CLASSES), -5.0)
    pred_logits[1, 1] = 5.0
    pred_logits[3, 4] = 5.0
    outputs = {"pred_logits": pred_logits[None], "pred_boxes": pred_boxes[None]}

    [(query_indices, target_indices)] = HungarianMatcher()(
        outputs, [{"labels": labels, "boxes": target_boxes}]
    )

    assert query_indices.tolist() == [1, 3]
    assert target_indices.tolist() == [1, 0]


def test_images_without_targets_get_empty_matches():
    gen = torch.Generator().manual_seed(0)
    outputs = {
        "pred_logits": torch.randn(3, 4, NUM_CLASSES, generator=gen),
        "pred_boxes": torch.stack([_random_boxes(4, gen) for _ in range(3)]),
    }
    empty = {"labels": torch.zeros(0, dtype=torch.int64), "boxes": torch.zeros(0, 4)}
    one = {"labels": torch.tensor([2]), "boxes": _random_boxes(1, gen)}
    matcher = HungarianMatcher()

    for targets in ([empty, empty, empty], [empty, one, empty]):
        matches = matcher(outputs, targets)
        for (query_indices, target_indices), target in zip(matches, targets):
            assert query_indices.dtype == target_indices.dtype == torch.int64
            assert len(query_indices) == len(target_indices) == len(target["labels"])


def test_half_precision_inputs_match_as_in_float32():
    gen = torch.Generator().manual_seed(1)
    outputs = {
        "pred_logits": torch.randn(2, 6, NUM_CLASSES, generator=gen).half(),
        "pred_boxes": torch.stack([_random_boxes(6, gen) for _ in range(2)]).half(),
    }
    targets = [
        {
            "labels": torch.randint(NUM_CLASSES, (n,), generator=gen),
            "boxes": _random_boxes(n, gen).half(),
        }
        for n in (3, 4)
    ]
    as_float = {k: v.float() for k, v in outputs.items()}
    float_targets = [{"labels": t["labels"], "boxes": t["boxes"].float()} for t in targets]
    matcher = HungarianMatcher()

    for (q_half, t_half), (q_float, t_float) in zip(
        matcher(outputs, targets), matcher(as_float, float_targets)
    ):
        assert torch.equal(q_half, q_float) and torch.equal(t_half, t_float)


def test_all_zero_costs_are_rejected():
    with pytest.raises(ValueError, match="cannot all be 0"):
        HungarianMatcher(cost_class=0, cost_bbox=0, cost_giou=0)


@pytest.mark.parametrize("key", ["pred_logits", "pred_boxes"])
def test_non_finite_predictions_raise_a_floating_point_error(key):
    """Not scipy's `ValueError: matrix contains invalid numeric entries`."""
    gen = torch.Generator().manual_seed(2)
    outputs = {
        "pred_logits": torch.randn(1, 4, NUM_CLASSES, generator=gen),
        "pred_boxes": _random_boxes(4, gen)[None],
    }
    outputs[key][0, 2, 1] = float("nan")
    targets = [{"labels": torch.tensor([0, 1]), "boxes": _random_boxes(2, gen)}]
    with pytest.raises(
        FloatingPointError, match=f"HungarianMatcher: .*1 non-finite values in {key}"
    ):
        HungarianMatcher()(outputs, targets)
