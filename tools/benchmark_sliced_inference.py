#!/usr/bin/env python
"""Time per image and peak memory of sliced inference (SlicedDetector) on one large
image, with a config's model (random weights unless train.init_checkpoint is given:
the time does not depend on them). Prints a Markdown table row per setting.

    python tools/benchmark_sliced_inference.py \\
        --config-file configs/synthetic/deformable_detr_tiny.py \\
        --image $D2EXT_DATASETS/neon_trees/images/2019_YELL_2_541000_4977000_image_crop.png \\
        --window-size 400 --overlap 100 --batch-size 4

Without --image, a random image of --size HxW. Time: the median over --repeats
calls after one warm-up call, perf_counter (CUDA synchronized). Peak memory: what
inference adds to the loaded model and image, at its peak: on CUDA
torch.cuda.max_memory_allocated, on the CPU the process's peak resident set (VmHWM),
less what was allocated (resident) before the first call. One setting per process,
so that memory freed by an earlier setting does not hide the next one's.
"""

# deformable_detr first: it imports detectron2 with its import-time warnings silenced
import deformable_detr  # noqa: F401

# isort: split
import argparse
import statistics
import time
from pathlib import Path

import torch
from detectron2.data.detection_utils import read_image

from deformable_detr.config.build import build_model, input_format, load_config
from deformable_detr.data.tiling import window_grid
from deformable_detr.modeling.sliced_inference import SlicedDetector, lazy_sliced_arguments


def _status_kib(field: str) -> int:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1])
    raise RuntimeError(f"/proc/self/status has no {field}")


def measure(detector, inputs, device: str, repeats: int):
    """(median seconds of `repeats` calls after a warm-up, peak bytes beyond the memory
    in use before the first call, number of detections)."""
    cuda = device.startswith("cuda")
    base = torch.cuda.memory_allocated() if cuda else _status_kib("VmRSS") * 1024
    times = []
    with torch.no_grad():
        for _ in range(repeats + 1):  # the first call is a warm-up
            start = time.perf_counter()
            found = len(detector([inputs])[0]["instances"])
            if cuda:
                torch.cuda.synchronize()
            times.append(time.perf_counter() - start)
    peak = torch.cuda.max_memory_allocated() if cuda else _status_kib("VmHWM") * 1024
    return statistics.median(times[1:]), peak - base, found


def main(argv=None):
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--config-file", required=True, help="a LazyConfig (.py)")
    parser.add_argument("--image", help="the image (else a random one of --size)")
    parser.add_argument("--size", default="1035x1249", help="HxW of the random image")
    parser.add_argument("--window-size", type=int, default=400)
    parser.add_argument("--overlap", type=int, default=100)
    parser.add_argument("--full-view", action="store_true")
    parser.add_argument("--batch-size", type=int, default=1, help="windows per model call")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--device", default="cpu")
    parser.add_argument("opts", nargs=argparse.REMAINDER, help="config overrides key=value")
    args = parser.parse_args(argv)
    cfg = load_config(args.config_file, args.opts, lazy_only=True)
    torch.manual_seed(0)
    weights = cfg.train.get("init_checkpoint") or None
    model = build_model(cfg, weights=weights, device=args.device)
    if args.image:
        image = read_image(args.image, format=input_format(cfg))
    else:
        height, width = (int(v) for v in args.size.split("x"))
        image = torch.randint(0, 256, (height, width, 3), dtype=torch.uint8).numpy()
    height, width = image.shape[:2]
    inputs = {
        "image": torch.as_tensor(image.astype("float32").transpose(2, 0, 1)),
        "height": height,
        "width": width,
    }
    windows = len(window_grid(height, width, args.window_size, args.overlap))
    full_view = " + full view" if args.full_view else ""
    print(
        f"{width}x{height} image, {windows} windows of {args.window_size} (overlap "
        f"{args.overlap}){full_view}, {args.device}, {torch.get_num_threads()} threads, "
        + (f"weights {weights}" if weights else "random weights")
    )
    arguments = lazy_sliced_arguments(cfg)
    arguments.update(
        window_size=args.window_size,
        overlap=args.overlap,
        full_view=args.full_view,
        batch_size=args.batch_size,
    )
    detector = SlicedDetector(model, **arguments)
    seconds, peak, found = measure(detector, inputs, args.device, args.repeats)
    print("| windows per call | s / image | peak memory MiB | detections |")
    print("|---|---|---|---|")
    print(f"| {args.batch_size} | {seconds:.2f} | {peak / 2**20:.0f} | {found} |")


if __name__ == "__main__":
    main()
