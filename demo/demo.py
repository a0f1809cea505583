#!/usr/bin/env python
"""Runs a trained Deformable DETR on images and writes them with the detections drawn.

    # LazyConfig (.py): overrides are key=value, the weights train.init_checkpoint
    python demo/demo.py \\
        --config-file configs/synthetic/deformable_detr_tiny.py \\
        --input ~/.cache/d2ext/datasets/synthetic_shapes/val/00000*.jpg --output output/demo \\
        --opts train.init_checkpoint=output/synthetic_tiny/model_final.pth
    # yacs (.yaml, through DefaultPredictor): overrides are KEY VALUE pairs or KEY=VALUE
    python demo/demo.py \\
        --config-file configs/COCO/deformable_detr_r50_50ep.yaml \\
        --input images/ --output output/demo \\
        --confidence-threshold 0.3 --opts MODEL.WEIGHTS model_final.pth
    # an exported artefact (tools/deploy/export_model.py) in place of the model, e.g. the
    # int8 ONNX one for a CPU server; the config gives the resize and class names
    python demo/demo.py \
        --config-file configs/synthetic/deformable_detr_tiny.py \
        --input images/ --output output/demo --artefact exported/model_int8.onnx

--input takes files, glob patterns and folders (their images). One image per
input is written to --output under the input's file name. Class names are those
the weights record (checkpoints of tools/lazyconfig_train_net.py and the converters
record them), else those of the config's test dataset (its metadata). LazyConfig
models see the image through the test mapper's augmentation
(dataloader.test.mapper.augmentation) and image_format, as in evaluation.
"""

# deformable_detr first: it imports detectron2 with its import-time warnings silenced
import deformable_detr  # noqa: F401

# isort: split
import argparse
import glob
import os

import cv2
import torch
import tqdm
from detectron2.config import instantiate
from detectron2.data import DatasetCatalog, MetadataCatalog
from detectron2.data import transforms as T
from detectron2.data.catalog import Metadata
from detectron2.data.detection_utils import convert_image_to_rgb, read_image
from detectron2.engine import DefaultPredictor
from detectron2.utils.visualizer import Visualizer

from deformable_detr.checkpoint.checkpointer import UnreadableCheckpointError
from deformable_detr.config.build import build_model, input_format, is_yacs, load_config
from deformable_detr.config.overrides import ConfigOverrideError
from deformable_detr.data import synthetic
from deformable_detr.data.build import dataset_name, register_yacs_datasets
from deformable_detr.data.coco_json import DatasetError
from deformable_detr.data.dataset_mapper import detr_test_augmentation
from deformable_detr.engine.host_memory import reuse_freed_memory
from deformable_detr.export.artefacts import (
    ArtefactDetector,
    ImageSizeError,
    artefact_format,
    load_artefact,
)
from deformable_detr.modeling.sliced_inference import slice_predictor

IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".bmp", ".tif", ".tiff", ".webp")


def parse_args(argv=None):
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--config-file", required=True, help="LazyConfig .py or yacs .yaml")
    parser.add_argument(
        "--input", nargs="+", required=True, help="image files, glob patterns or folders"
    )
    parser.add_argument(
        "--output", required=True, help="folder for the visualized images (created)"
    )
    parser.add_argument("--confidence-threshold", type=float, default=0.5)
    parser.add_argument(
        "--artefact",
        help="run this exported model (.onnx, .ts, .pt2, _aoti.pt2 from "
        "tools/deploy/export_model.py) instead of the config's weights",
    )
    parser.add_argument(
        "--sliced",
        action="store_true",
        help="sliced inference for large images: overlapping windows, detections merged "
        "(settings train.sliced_inference.* or TEST.SLICED.*, overridable with --opts)",
    )
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument(
        "--reuse-freed-memory",
        action=argparse.BooleanOptionalAction,
        default=True,
        help="on a CPU, malloc keeps freed memory for the next image instead of returning "
        "it to the system: faster, at the cost of keeping the peak memory "
        "(deformable_detr.engine.host_memory)",
    )
    parser.add_argument(
        "--scale", type=float, default=1.0, help="resize factor of the written images"
    )
    parser.add_argument(
        "--opts",
        nargs=argparse.REMAINDER,
        default=[],
        help="config overrides: key=value for .py (e.g. train.init_checkpoint=model.pth), "
        "KEY VALUE pairs or KEY=VALUE for .yaml (e.g. MODEL.WEIGHTS model.pth)",
    )
    return parser.parse_args(argv)


def expand_inputs(inputs) -> list:
    """Image paths of files, glob patterns and folders, in order, without duplicates."""
    paths = []
    for item in inputs:
        item = os.path.expanduser(item)
        if os.path.isdir(item):
            paths += sorted(
                os.path.join(item, f)
                for f in os.listdir(item)
                if f.lower().endswith(IMAGE_EXTENSIONS)
            )
        elif os.path.isfile(item):
            paths.append(item)
        else:
            paths += sorted(p for p in glob.glob(item) if os.path.isfile(p))
    return list(dict.fromkeys(paths))


def test_metadata(dataset_name: str):
    """MetadataCatalog entry of `dataset_name`; for the synthetic shapes, its class
    names even when the dataset is not generated and registered here."""
    metadata = MetadataCatalog.get(dataset_name)
    if dataset_name in synthetic.DATASET_NAMES and dataset_name not in DatasetCatalog.list():
        metadata.thing_classes = list(synthetic.CLASSES)
    return metadata


def test_augmentation(cfg) -> T.AugmentationList:
    """The resize of the config's test images: the LazyConfig test mapper's
    augmentation, or the yacs test mapper's (INPUT.MIN_SIZE_TEST / MAX_SIZE_TEST)."""
    if is_yacs(cfg):
        return T.AugmentationList(
            detr_test_augmentation(cfg.INPUT.MIN_SIZE_TEST, cfg.INPUT.MAX_SIZE_TEST)
        )
    augmentation = instantiate(cfg.dataloader.test.mapper.get("augmentation", None)) or []
    return T.AugmentationList(
        [augmentation] if isinstance(augmentation, T.Augmentation) else list(augmentation)
    )


class ConfigPredictor:
    """DefaultPredictor's counterpart for a LazyConfig, or for an exported artefact
    with either config: BGR image in, outputs of the model (eval mode, no grad) out."""

    def __init__(self, cfg, model):
        self.model = model
        self.aug = test_augmentation(cfg)
        self.input_format = input_format(cfg)

    @torch.no_grad()
    def __call__(self, image_bgr):
        height, width = image_bgr.shape[:2]
        image = image_bgr[:, :, ::-1] if self.input_format == "RGB" else image_bgr
        aug_input = T.AugInput(image)
        self.aug(aug_input)
        tensor = torch.as_tensor(aug_input.image.astype("float32").transpose(2, 0, 1))
        return self.model([{"image": tensor, "height": height, "width": width}])[0]


def setup(args):
    """(predictor, metadata) for args.config_file; the class names are those the
    weights record or the data's, else the test dataset's metadata."""
    cfg = load_config(args.config_file, args.opts)
    if is_yacs(cfg):
        register_yacs_datasets(cfg)  # DATASETS.TEST_JSON and the like; NUM_CLASSES 0 from them
        cfg.MODEL.DEVICE = args.device
        cfg.freeze()
    name = dataset_name(cfg, "test") or "__unused"
    if args.artefact:
        if not os.path.isfile(args.artefact):
            raise SystemExit(f"--artefact {args.artefact}: no such file")
        try:
            artefact = load_artefact(args.artefact, artefact_format(args.artefact))
        except ValueError as e:
            raise SystemExit(f"--artefact: {e}")
        predictor = ConfigPredictor(cfg, ArtefactDetector(artefact))
    elif is_yacs(cfg):
        predictor = DefaultPredictor(cfg)
    else:  # weights train.init_checkpoint, loaded strictly
        predictor = ConfigPredictor(cfg, build_model(cfg, device=args.device))
    if args.sliced:
        slice_predictor(predictor, cfg)
    class_names = getattr(predictor.model, "class_names", None)
    if class_names:
        return predictor, Metadata(name="demo", thing_classes=list(class_names))
    return predictor, test_metadata(name)


def visualize(image_bgr, instances, metadata, threshold: float, scale: float = 1.0):
    """BGR image (resized by `scale`) with the instances scoring at least `threshold` drawn."""
    instances = instances.to("cpu")
    instances = instances[instances.scores >= threshold]
    visualizer = Visualizer(convert_image_to_rgb(image_bgr, "BGR"), metadata, scale=scale)
    return visualizer.draw_instance_predictions(instances).get_image()[:, :, ::-1]


def main(argv=None):
    args = parse_args(argv)
    paths = expand_inputs(args.input)
    if not paths:
        raise SystemExit(f"--input {' '.join(args.input)}: no image matches")
    predictor, metadata = setup(args)
    if args.reuse_freed_memory and torch.device(args.device).type == "cpu":
        reuse_freed_memory()
    os.makedirs(args.output, exist_ok=True)
    for path in tqdm.tqdm(paths, desc="demo", unit="image"):
        image = read_image(path, format="BGR")
        try:
            instances = predictor(image)["instances"]
        except ImageSizeError as e:  # a fixed-size package; the config resized the image
            raise SystemExit(f"error: {path}, as the config resizes it: {e}")
        out = os.path.join(args.output, os.path.basename(path))
        if not cv2.imwrite(
            out, visualize(image, instances, metadata, args.confidence_threshold, args.scale)
        ):
            raise SystemExit(f"could not write {out}")
    print(f"wrote {len(paths)} image(s) to {args.output}")


if __name__ == "__main__":
    try:
        main()
    except (
        ConfigOverrideError,
        DatasetError,
        UnreadableCheckpointError,  # also from DefaultPredictor (deformable_detr.checkpoint)
    ) as e:
        raise SystemExit(f"error: {e}")
