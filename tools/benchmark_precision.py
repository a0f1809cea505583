#!/usr/bin/env python
"""AP and time of a trained model's inference at each precision, on its config's
test set: float32, bfloat16 with the layers that place samples and boxes in
float32 (deformable_detr.precision.FLOAT32_MODULES, the "bf16" switch), and
bfloat16 everywhere (what the kept list is measured against).

    python tools/benchmark_precision.py \\
        --config-file configs/synthetic/deformable_detr_tiny_multiscale.py \\
        train.init_checkpoint=output/synthetic_tiny_multiscale/model_final.pth

Prints a markdown table: AP, AP50, AP75, seconds for the test set, the time
against float32, and how many of the first images' top-10 detections keep their
class (matched by rank) against float32.
"""

import argparse
import time

import torch
from detectron2.config import instantiate
from detectron2.evaluation import inference_on_dataset

from deformable_detr.build import build_model, load_config
from deformable_detr.precision import FLOAT32_MODULES, set_inference_precision

SETTINGS = (
    ("fp32", "fp32", ()),
    ("bf16 (kept layers in fp32)", "bf16", FLOAT32_MODULES),
    ("bf16 everywhere", "bf16", ()),
)


def parse_args(argv=None):
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--config-file", required=True, help="LazyConfig .py file")
    parser.add_argument("--compare-images", type=int, default=20)
    parser.add_argument("opts", nargs=argparse.REMAINDER, help="key=value config overrides")
    return parser.parse_args(argv)


def main(argv=None):
    args = parse_args(argv)
    cfg = load_config(args.config_file, args.opts)
    loader = instantiate(cfg.dataloader.test)
    sample = [batch for _, batch in zip(range(args.compare_images), loader)]
    rows, reference, reference_seconds = [], None, None
    for name, precision, kept in SETTINGS:
        model = set_inference_precision(build_model(cfg, device="cpu"), precision, kept)
        start = time.perf_counter()
        result = inference_on_dataset(model, loader, instantiate(cfg.dataloader.evaluator))
        seconds = time.perf_counter() - start
        with torch.no_grad():
            classes = [model(batch)[0]["instances"].pred_classes[:10] for batch in sample]
        reference = reference or classes
        reference_seconds = reference_seconds or seconds
        same = sum(int((c == r).sum()) for c, r in zip(classes, reference))
        total = sum(len(r) for r in reference)
        ap = result["bbox"]
        rows.append(
            f"| {name} | {ap['AP']:.2f} | {ap['AP50']:.2f} | {ap['AP75']:.2f} | {seconds:.1f} "
            f"| {seconds / reference_seconds:.2f}x | {same}/{total} |"
        )
    print(f"CPU capability: {torch.backends.cpu.get_cpu_capability()}")
    print("| precision | AP | AP50 | AP75 | s (test set) | time vs fp32 | top-10 classes as fp32 |")
    print("|---|---|---|---|---|---|---|")
    print("\n".join(rows))


if __name__ == "__main__":
    main()
