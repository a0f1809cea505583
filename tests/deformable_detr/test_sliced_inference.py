"""SlicedDetector: the windows' detections are the model's on each window, mapped to
the image; objects lying whole in a window come out exactly once with the edge
margin; the model's cap is per window; the full view finds objects larger than the
overlap; evaluation's resized images are sliced at their original size; the yacs
(SlicedPredictor), LazyConfig and demo switches; bad arguments are named; the NEON
validation image when prepared."""

import json
import os

import cv2
import numpy as np
import pytest
import torch
from detectron2.data import transforms as T
from detectron2.modeling import build_model as build_yacs_model
from detectron2.structures import Boxes, Instances
from torch import nn

from deformable_detr import load_yacs_config
from deformable_detr.config.build import build_model as build_configured_model
from deformable_detr.config.build import load_config
from deformable_detr.config.overrides import apply_overrides
from deformable_detr.data.tiling import window_grid
from deformable_detr.modeling.sliced_inference import (
    SlicedDetector,
    SlicedPredictor,
    with_sliced_inference,
)

from ..scripts import ROOT, load_script
from ..train_net_runs import train_net
from .coco_folder import CLASS_NAMES, write_coco_folder
from .real_images import neon_trees_or_skip
from .tiny_model import build_model

SYNTHETIC = ROOT / "configs" / "synthetic" / "deformable_detr_tiny"
TINY_CUSTOM = ROOT / "configs" / "custom" / "deformable_detr_tiny_custom.py"


class BlobDetector(nn.Module):
    """Finds the bright squares of whatever image it gets: one box per connected
    component (cut ones included), class 0, score its brightness / 255, at most
    test_topk of them (the brightest); records the input sizes."""

    def __init__(self, test_topk=100):
        super().__init__()
        self.test_topk = test_topk
        self.sizes = []
        self.eval()

    def forward(self, batched_inputs):
        outputs = []
        for x in batched_inputs:
            image = x["image"].permute(1, 2, 0).numpy().max(axis=2)
            self.sizes.append(image.shape)
            count, labels, stats, _ = cv2.connectedComponentsWithStats((image > 0).astype(np.uint8))
            found = [
                ([s[0], s[1], s[0] + s[2], s[1] + s[3]], image[labels == i].max() / 255.0)
                for i, s in enumerate(stats[1:], start=1)
            ]
            found = sorted(found, key=lambda f: -f[1])[: self.test_topk]
            sy, sx = x["height"] / image.shape[0], x["width"] / image.shape[1]
            instances = Instances((x["height"], x["width"]))
            boxes = torch.tensor([b for b, _ in found], dtype=torch.float32).reshape(-1, 4)
            instances.pred_boxes = Boxes(boxes * torch.tensor([sx, sy, sx, sy]))
            instances.scores = torch.tensor([s for _, s in found], dtype=torch.float32)
            instances.pred_classes = torch.zeros(len(found), dtype=torch.int64)
            outputs.append({"instances": instances})
        return outputs


def squares_image(height, width, squares):
    """(3, H, W) float image, black, with squares (x, y, side, brightness)."""
    image = np.zeros((height, width, 3), np.float32)
    for x, y, side, brightness in squares:
        image[y : y + side, x : x + side] = brightness
    return torch.as_tensor(image.transpose(2, 0, 1))


def detect(detector, image, **inputs):
    with torch.no_grad():
        return detector([{"image": image, **inputs}])[0]["instances"]


def sorted_boxes(instances):
    boxes = instances.pred_boxes.tensor
    return boxes[torch.argsort(boxes[:, 0] * 10000 + boxes[:, 1])].tolist()


@pytest.mark.slow
def test_windows_are_the_model_on_each_window_mapped_to_the_image():
    """Nothing merged (IoU threshold 1): the detections are, exactly, those of the
    model run on each window (resized by the window augmentation), shifted."""
    torch.manual_seed(0)
    model = build_model("multi_scale").eval()
    image = torch.randint(0, 256, (3, 150, 200), generator=torch.Generator().manual_seed(1))
    image = image.float()
    resize = [T.ResizeShortestEdge(64, 1000)]
    sliced = SlicedDetector(
        model, window_size=96, overlap=32, window_augmentation=resize, iou_threshold=1.0
    )
    got = detect(sliced, image, height=150, width=200)
    expected = []
    windows = window_grid(150, 200, 96, 32)
    for x0, y0, x1, y1 in windows:
        crop = image[:, y0:y1, x0:x1].permute(1, 2, 0).numpy()
        resized = resize[0].get_transform(crop).apply_image(crop)
        window = detect(
            model, torch.as_tensor(resized.transpose(2, 0, 1).copy()), height=y1 - y0, width=x1 - x0
        )
        boxes = window.pred_boxes.tensor + torch.tensor([x0, y0, x0, y0])
        expected += [(s, b) for s, b in zip(window.scores.tolist(), boxes.tolist())]
    assert len(windows) == 6 and len(got) == len(expected) == 6 * model.test_topk  # no global cap
    expected.sort(key=lambda e: -e[0])
    torch.testing.assert_close(got.scores, torch.tensor([s for s, _ in expected]))
    torch.testing.assert_close(got.pred_boxes.tensor, torch.tensor([b for _, b in expected]))


# 24 px squares on a 330 x 420 image; windows of 160 sharing 64: each square lies whole
# in some window, and (150, 140) and (250, 20) are cut by window edges (x 160, y 160; x 256, 260)
SQUARES = [(10, 10, 24, 200), (150, 140, 24, 180), (250, 20, 24, 220), (300, 200, 24, 240),
           (380, 20, 24, 160), (200, 100, 24, 250)]  # fmt: skip


def true_boxes(squares):
    return sorted(
        [[x, y, x + s, y + s] for x, y, s, _ in squares], key=lambda b: b[0] * 10000 + b[1]
    )


def test_objects_whole_in_a_window_come_out_once_with_the_window_box():
    image = squares_image(330, 420, SQUARES)
    model = BlobDetector()
    sliced = SlicedDetector(model, window_size=160, overlap=64, edge_margin=1)
    got = detect(sliced, image, height=330, width=420)
    assert sorted_boxes(got) == true_boxes(SQUARES)
    assert sorted(got.scores.tolist()) == pytest.approx(sorted(b / 255.0 for *_, b in SQUARES))
    assert set(model.sizes) == {(160, 160)}  # windows at the image's resolution
    # without the margin, the cut copies of a square stay beside it
    got = detect(SlicedDetector(BlobDetector(), window_size=160, overlap=64), image)
    assert len(got) > len(SQUARES)


def test_the_model_cap_is_per_window_and_the_image_keeps_every_object():
    squares = [
        (x, y, 12, 100 + (x + y) % 150) for x in range(4, 400, 20) for y in range(4, 310, 20)
    ]
    image = squares_image(330, 420, squares)
    model = BlobDetector(test_topk=70)  # a window of 160 x 160 holds at most 64 of them
    got = detect(SlicedDetector(model, window_size=160, overlap=64, edge_margin=1), image)
    assert len(squares) > 300 and sorted_boxes(got) == true_boxes(squares)
    capped = SlicedDetector(model, window_size=160, overlap=64, edge_margin=1, max_detections=50)
    assert len(detect(capped, image)) == 50


def test_full_view_finds_an_object_larger_than_the_overlap():
    image = squares_image(300, 300, [(90, 90, 120, 200)])  # cut by every window
    sliced = SlicedDetector(BlobDetector(), window_size=160, overlap=40, edge_margin=2)
    assert len(detect(sliced, image)) == 0
    sliced.full_view = True
    got = detect(sliced, image)
    assert len(got) == 1
    torch.testing.assert_close(
        got.pred_boxes.tensor, torch.tensor([[90.0, 90, 210, 210]]), atol=2, rtol=0
    )


def test_a_resized_image_is_sliced_at_its_original_size(tmp_path):
    full = squares_image(330, 420, SQUARES)
    path = str(tmp_path / "big.png")
    cv2.imwrite(path, full.permute(1, 2, 0).numpy().astype(np.uint8))
    small = torch.nn.functional.interpolate(full[None], size=(110, 140))[0]
    sliced = SlicedDetector(BlobDetector(), window_size=160, overlap=64, edge_margin=1)
    got = detect(sliced, small, height=330, width=420, file_name=path)
    assert sorted_boxes(got) == true_boxes(SQUARES)
    with pytest.raises(ValueError, match="420x330 pixels, but its inputs give width 400"):
        detect(sliced, small, height=330, width=400, file_name=path)


@pytest.mark.parametrize(
    "kwargs, message",
    [
        (dict(overlap=160), "window size 160, overlap 160; expected 0 <= overlap < size"),
        (dict(merge="mean"), "merge='mean'; expected one of wbf, nms"),
        (dict(iou_threshold=0.0), "iou_threshold=0.0; expected a value in"),
        (dict(edge_margin=40), "edge_margin=40; expected 0 <= 2 * it < overlap 64"),
        (dict(max_detections=0), "max_detections=0, batch_size=1; expected >= 1"),
    ],
)
def test_bad_arguments_are_named(kwargs, message):
    with pytest.raises(ValueError, match=message.replace("(", r"\(").replace("*", r"\*")):
        SlicedDetector(BlobDetector(), **{"window_size": 160, "overlap": 64, **kwargs})


def test_training_mode_is_refused():
    model = build_model("multi_scale")
    with pytest.raises(RuntimeError, match="call .eval"):
        SlicedDetector(model, window_size=64, overlap=16)([{"image": torch.zeros(3, 8, 8)}])


def test_lazy_config_switch():
    cfg = load_config(str(SYNTHETIC.with_suffix(".py")))
    model = build_model("multi_scale")
    assert with_sliced_inference(model, cfg) is model
    cfg = apply_overrides(
        cfg, ["train.sliced_inference.enabled=True", "train.sliced_inference.window_size=256"]
    )
    sliced = with_sliced_inference(model, cfg)
    assert isinstance(sliced, SlicedDetector) and sliced.model is model
    assert (sliced.window_size, sliced.overlap, sliced.image_format) == (256, 200, "RGB")
    cfg = apply_overrides(cfg, ["train.test_aug.enabled=True"])
    with pytest.raises(ValueError, match="expected one of them"):
        with_sliced_inference(model, cfg)


def _yacs_weights(tmp_path, options):
    cfg = load_yacs_config(str(SYNTHETIC.with_suffix(".yaml")), options)
    weights = tmp_path / "model.pth"
    torch.save({"model": build_yacs_model(cfg).state_dict()}, weights)
    return str(weights)


@pytest.mark.slow
def test_sliced_predictor(tmp_path):
    options = ["MODEL.DEVICE", "cpu", "TEST.SLICED.WINDOW_SIZE", 96, "TEST.SLICED.OVERLAP", 32]
    options += ["MODEL.WEIGHTS", _yacs_weights(tmp_path, options)]
    cfg = load_yacs_config(str(SYNTHETIC.with_suffix(".yaml")), options)
    predictor = SlicedPredictor(cfg)
    image = np.random.default_rng(0).integers(0, 256, (150, 250, 3), dtype=np.uint8)
    instances = predictor(image)["instances"]
    windows = len(window_grid(150, 250, 96, 32))
    assert instances.image_size == (150, 250)
    assert (
        cfg.MODEL.DEFORMABLE_DETR.TEST_TOPK
        < len(instances)
        <= windows * cfg.MODEL.DEFORMABLE_DETR.TEST_TOPK
    )
    boxes = instances.pred_boxes.tensor
    assert (boxes >= 0).all() and (boxes[:, 2] <= 250).all() and (boxes[:, 3] <= 150).all()


@pytest.mark.slow
def test_demo_sliced(tmp_path):
    options = ["MODEL.DEVICE", "cpu"]
    weights = _yacs_weights(tmp_path, options)
    image = tmp_path / "big.png"
    cv2.imwrite(
        str(image), np.random.default_rng(0).integers(0, 256, (200, 300, 3), dtype=np.uint8)
    )
    load_script("demo/demo.py").main(
        ["--config-file", str(SYNTHETIC.with_suffix(".yaml")), "--input", str(image),
         "--output", str(tmp_path / "out"), "--device", "cpu", "--sliced", "--opts",
         "MODEL.WEIGHTS", weights, "TEST.SLICED.WINDOW_SIZE", "128", "TEST.SLICED.OVERLAP", "32"]
    )  # fmt: skip
    assert cv2.imread(str(tmp_path / "out" / "big.png")).shape == (200, 300, 3)


@pytest.mark.slow
def test_eval_only_slices_the_test_images(tmp_path):
    """--eval-only with train.sliced_inference.enabled evaluates the merged detections
    of the whole test images (their files read again at their size)."""
    val_json, val_images = write_coco_folder(tmp_path, "val", 2, seed=1, size=300)
    data = [f"dataloader.{split}.dataset.{key}={value}" for split in ("train", "test")
            for key, value in (("json_file", val_json), ("image_root", val_images))]  # fmt: skip
    cfg = load_config(str(TINY_CUSTOM), [*data, "train.device=cpu"])
    weights = tmp_path / "model.pth"
    model = build_configured_model(cfg, weights=None, device="cpu", class_names=CLASS_NAMES)
    torch.save({"model": model.state_dict()}, weights)
    log = train_net(
        tmp_path, "--config-file", str(TINY_CUSTOM), "--eval-only", *data, "train.device=cpu",
        f"train.init_checkpoint={weights}", f"train.output_dir={tmp_path / 'out'}",
        "dataloader.test.num_workers=0", "train.sliced_inference.enabled=True",
        "train.sliced_inference.window_size=128", "train.sliced_inference.overlap=32",
    )  # fmt: skip
    assert "sliced inference: 300x300 image, 9 windows of 128 (overlap 32)" in log
    assert "copypaste: AP,AP50" in log


@pytest.mark.slow
def test_neon_validation_image_whole():
    """A random tiny model on the whole 1249 x 1035 validation image: boxes in its
    pixels, more of them than one window's cap."""
    root = neon_trees_or_skip()
    data = json.load(open(os.path.join(root, "val.json")))
    (image_info,) = data["images"]
    path = os.path.join(root, "images", image_info["file_name"])
    image = torch.as_tensor(cv2.imread(path)[:, :, ::-1].astype("float32").transpose(2, 0, 1))
    torch.manual_seed(0)
    model = build_model("multi_scale").eval()
    sliced = SlicedDetector(model, window_size=400, overlap=100, batch_size=4)
    got = detect(sliced, image, height=1035, width=1249)
    assert got.image_size == (1035, 1249) and len(got) > model.test_topk
    boxes = got.pred_boxes.tensor
    assert (boxes[:, 2] <= 1249).all() and (boxes[:, 3] <= 1035).all()
