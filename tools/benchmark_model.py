"""End-to-end Deformable DETR benchmark: our detectron2 model (MSDA backends
cpp and numba) beside HF transformers' DeformableDetrForObjectDetection with the
same configuration, on the same device, in one run. Prints Markdown tables.

    # the GPU comparison: batch 2 training at 800x1333, inference at batch 1 and 4
    python tools/benchmark_model.py --device cuda
    python tools/benchmark_model.py \\
        --variant box_refine --amp bf16
    # CPU smoke test (the numba row is skipped: its kernel is CUDA only)
    python tools/benchmark_model.py --device cpu \\
        --height 128 --width 160 --warmup 1 --repeats 2

    # CPU deployment: our eager model, torch.compile, ONNX Runtime and AOTInductor
    # beside HF eager (float32 and bfloat16 autocast), inference at batch 1 and 4
    # (exports and compiles first); --precisions bf16 int8 adds our bfloat16 paths
    # and the int8 ones (torch.compile and AOTInductor through PT2E quantization, and
    # ONNX Runtime); --hf-compile adds HF under torch.compile (minutes of
    # compiling; slower than HF eager where it was measured, docs/benchmarks.md);
    # --reuse-freed-memory: malloc keeps freed memory, for all models (fewer page faults);
    # --fixed-size-package adds the aoti package compiled for the one image size
    python tools/benchmark_model.py --deploy --device cpu --precisions fp32 bf16 int8

Both models have random weights (nothing is downloaded): ResNet-50 (frozen BN,
stem and first stage frozen), 4 levels (res3-res5 + a stride-2 level), 6+6
layers, hidden_dim 256, 8 heads, FFN 1024, 4 points, dropout 0.1, 300 queries,
--num-classes labels (80 by default, as configs/COCO), auxiliary losses on every
decoder layer. Ours is configs/COCO/deformable_detr_r50*_50ep.py via LazyConfig
with model.transformer.msda_backend overridden; HF's is built from it by
deformable_detr.checkpoint.hf_peer (so its attention and FFN dropouts are the official 0.1
too, and the same backbone stages train), with its MSDA on the PyTorch
grid_sample path (no hub kernels).

Training: forward + loss + backward + AdamW step (lr 2e-4, weight decay 1e-4; no
gradient clipping for either) at --batch images of --height x --width, each with
--boxes random boxes. Inference: eval mode at batch 1
and 4 (torch.no_grad), including post-processing for both: ours runs top-100 over queries x
classes and detector_postprocess inside forward; for HF the same top-100 +
cxcywh->xyxy + scaling to the image size is run after forward (the work of
DeformableDetrImageProcessor.post_process_object_detection, without its score
threshold). Times are medians over --repeats iterations after --warmup, from CUDA
events (with torch.cuda.synchronize) on CUDA, perf_counter on CPU. Peak memory is
torch.cuda.max_memory_allocated over the timed iterations (CUDA only), weights
and optimizer state included.
"""

import argparse
import itertools
import os
import statistics
import sys
import time
from pathlib import Path

import torch

from d2ext.timing import time_ms

ROOT = Path(__file__).resolve().parents[1]

VARIANTS = {
    "multi_scale": "configs/COCO/deformable_detr_r50_50ep.py",
    "box_refine": "configs/COCO/deformable_detr_r50_box_refine_50ep.py",
    "two_stage": "configs/COCO/deformable_detr_r50_two_stage_50ep.py",
}
PIXEL_MEAN = [123.675, 116.280, 103.530]
PIXEL_STD = [58.395, 57.120, 57.375]


# ----------------------------------------------------------------------------- models
def build_ours(variant, backend, num_classes, device, opts=()):
    """The variant's config, with the overrides `opts` (KEY=VALUE), with random weights,
    in training mode; its classes are the benchmark's random labels 0 .. num_classes - 1."""
    from deformable_detr.config.build import build_model, load_config

    overrides = [f"model.transformer.msda_backend={backend}", f"model.num_classes={num_classes}"]
    cfg = load_config(str(ROOT / VARIANTS[variant]), overrides + list(opts))
    labels = [str(label) for label in range(num_classes)]
    return build_model(cfg, weights=None, device=device, class_names=labels).train()


def add_opts_argument(parser):
    """--opts KEY=VALUE ...: overrides of our model's config, for build_ours."""
    parser.add_argument(
        "--opts",
        nargs="+",
        default=[],
        metavar="KEY=VALUE",
        help="overrides of our model's config, e.g. model.transformer.encoder_ffn_row_blocks=4",
    )


def build_hf(variant, num_classes, device):
    """HF's model shaped like ours (deformable_detr.checkpoint.hf_peer), with our matcher
    costs and loss weights."""
    from deformable_detr.checkpoint.hf_peer import build_hf_peer

    ours = build_ours(variant, "torch", num_classes, "cpu")
    model = build_hf_peer(
        ours,
        class_cost=2,
        bbox_cost=5,
        giou_cost=2,
        bbox_loss_coefficient=5,
        giou_loss_coefficient=2,
        focal_alpha=0.25,
    )
    return model.to(device)


def trainable(model):
    return sum(p.numel() for p in model.parameters() if p.requires_grad)


# ----------------------------------------------------------------------------- inputs
def random_boxes(n, height, width, gen):
    """n (x0, y0, x1, y1) boxes in pixels, at least 8 px a side."""
    wh = torch.rand(n, 2, generator=gen) * torch.tensor([width * 0.5, height * 0.5]) + 8
    xy = torch.rand(n, 2, generator=gen) * (torch.tensor([width, height]) - wh)
    return torch.cat([xy, xy + wh], 1)


def make_batch(batch, height, width, n_boxes, num_classes, seed=0):
    gen = torch.Generator().manual_seed(seed)
    images = [
        torch.randint(0, 256, (3, height, width), generator=gen).float() for _ in range(batch)
    ]
    boxes = [random_boxes(n_boxes, height, width, gen) for _ in range(batch)]
    classes = [torch.randint(0, num_classes, (n_boxes,), generator=gen) for _ in range(batch)]
    return images, boxes, classes


def ours_inputs(images, boxes, classes, device, train):
    from detectron2.structures import Boxes, Instances

    inputs = []
    for img, b, c in zip(images, boxes, classes):
        d = {"image": img.to(device), "height": img.shape[1], "width": img.shape[2]}
        if train:
            inst = Instances(img.shape[1:])
            inst.gt_boxes = Boxes(b.to(device))
            inst.gt_classes = c.to(device)
            d["instances"] = inst
        inputs.append(d)
    return inputs


def hf_inputs(images, boxes, classes, device, train):
    mean = torch.tensor(PIXEL_MEAN).view(3, 1, 1)
    std = torch.tensor(PIXEL_STD).view(3, 1, 1)
    pixel_values = torch.stack([(img - mean) / std for img in images]).to(device)
    N, _, H, W = pixel_values.shape
    pixel_mask = torch.ones((N, H, W), dtype=torch.long, device=device)
    labels = None
    if train:
        scale = torch.tensor([W, H, W, H], dtype=torch.float32)
        labels = []
        for b, c in zip(boxes, classes):
            xyxy = b / scale
            cxcywh = torch.cat([(xyxy[:, :2] + xyxy[:, 2:]) / 2, xyxy[:, 2:] - xyxy[:, :2]], 1)
            labels.append({"class_labels": c.to(device), "boxes": cxcywh.to(device)})
    return pixel_values, pixel_mask, labels


def hf_postprocess(outputs, sizes, top_k=100):
    """DeformableDetrImageProcessor.post_process_object_detection's work, without
    the score threshold (ours keeps all top-k too)."""
    logits, boxes = outputs.logits, outputs.pred_boxes
    N, Q, K = logits.shape
    scores, idx = logits.sigmoid().view(N, -1).topk(min(top_k, Q * K), dim=1)
    queries = torch.div(idx, K, rounding_mode="floor")
    labels = idx % K
    cx, cy, w, h = boxes.unbind(-1)
    xyxy = torch.stack([cx - w / 2, cy - h / 2, cx + w / 2, cy + h / 2], -1)
    xyxy = xyxy.gather(1, queries[..., None].expand(-1, -1, 4))
    scale = torch.tensor(
        [[s[1], s[0], s[1], s[0]] for s in sizes], dtype=xyxy.dtype, device=xyxy.device
    )
    xyxy = xyxy * scale[:, None, :]
    return [{"scores": s, "labels": c, "boxes": b} for s, c, b in zip(scores, labels, xyxy)]


# ----------------------------------------------------------------------------- timing
def timed(fn, device, warmup, repeats):
    """(median ms, peak bytes or None) of fn() over repeats calls after warmup."""
    cuda = device.type == "cuda"
    if cuda:
        fn()  # the first call's allocations count as warm-up, not as the steady-state peak
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()
    median = time_ms(fn, device, warmup, repeats)
    return median, (torch.cuda.max_memory_allocated() if cuda else None)


def autocast(device, amp):
    if amp == "bf16":
        return torch.autocast(device.type, dtype=torch.bfloat16)
    return torch.autocast(device.type, enabled=False)


def bench_train(kind, model, args, device):
    images, boxes, classes = make_batch(
        args.batch, args.height, args.width, args.boxes, args.num_classes
    )
    model.train()
    params = [p for p in model.parameters() if p.requires_grad]
    opt = torch.optim.AdamW(params, lr=2e-4, weight_decay=1e-4)
    if kind == "hf":
        pv, pm, labels = hf_inputs(images, boxes, classes, device, train=True)

        def loss_fn():
            return model(pixel_values=pv, pixel_mask=pm, labels=labels).loss
    else:
        inputs = ours_inputs(images, boxes, classes, device, train=True)

        def loss_fn():
            return sum(model(inputs).values())

    def step():
        with autocast(device, args.amp):
            loss = loss_fn()
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()

    return timed(step, device, args.warmup, args.repeats)


def bench_infer(kind, model, batch, args, device):
    images, boxes, classes = make_batch(
        batch, args.height, args.width, args.boxes, args.num_classes, seed=1
    )
    model.eval()
    if kind == "hf":
        pv, pm, _ = hf_inputs(images, boxes, classes, device, train=False)
        sizes = [(args.height, args.width)] * batch

        def fwd():
            with torch.no_grad(), autocast(device, args.amp):
                return hf_postprocess(model(pixel_values=pv, pixel_mask=pm), sizes)
    else:
        inputs = ours_inputs(images, boxes, classes, device, train=False)

        def fwd():
            with torch.no_grad(), autocast(device, args.amp):
                return model(inputs)

    ms, _ = timed(fwd, device, args.warmup, args.repeats)
    return batch * 1e3 / ms


# ----------------------------------------------------------------------------- deployment
def deploy_runners(model, image, precision, workdir, calibration=(), fixed_size=False):
    """name -> (seconds to export or compile, fn) for our model's CPU paths on one
    image (3, H, W) at `precision` (model.inference_precision); each fn runs
    inference with post-processing (top-100 boxes in pixels). The compiled paths
    are built, and run once, here. bf16: no ONNX (onnxruntime's CPU provider has no
    bfloat16 convolution); int8: no eager path, the compiled paths through PT2E
    quantization (deformable_detr.export.pt2e_int8) and ONNX Runtime's, each calibrated
    on `calibration` images within its setup time. `fixed_size` adds the aoti package
    compiled for `image`'s size only ("ours aoti, fixed size")."""
    import time

    from deformable_detr.export.artefacts import (
        ImageToDetections,
        compile_inference,
        export,
        load_artefact,
    )
    from deformable_detr.export.precision import set_inference_precision
    from deformable_detr.export.pt2e_int8 import quantize

    runners = {}

    def build(name, make):
        start = time.perf_counter()
        fn = make()
        fn()  # compiles lazily (torch.compile) or loads kernels
        runners[name] = (time.perf_counter() - start, fn)

    def compiled():
        fn = compile_inference(quantize(module, calibration) if precision == "int8" else module)
        return lambda: fn(image)

    def onnxruntime_session():
        import onnxruntime

        path, _ = export(model, image, "onnx", workdir, precision, calibration)
        session = onnxruntime.InferenceSession(path)
        feed = {"image": image.numpy()}
        return lambda: session.run(None, feed)

    def aoti_package(fixed=False):
        output = os.path.join(workdir, "fixed" if fixed else "free")
        os.makedirs(output, exist_ok=True)
        path, _ = export(model, image, "aoti", output, precision, calibration, fixed)
        fn = load_artefact(path, "aoti")
        return lambda: fn(image)

    if precision != "int8":  # int8 is a quantized graph, with no eager path
        set_inference_precision(model, precision)
        runners["ours eager"] = (0.0, lambda: model([{"image": image}]))
    module = ImageToDetections(model)
    build("ours torch.compile", compiled)
    if precision != "bf16":
        build("ours onnxruntime", onnxruntime_session)
    build("ours aoti", aoti_package)
    if fixed_size:
        build("ours aoti, fixed size", lambda: aoti_package(fixed=True))
    return runners


def interleaved_medians(fns, device, warmup, repeats):
    """name -> median ms of fns[name](), timed in turns (one call of each per round) so
    that load from other processes on a shared machine falls on all of them alike."""
    for fn in fns.values():
        for _ in range(warmup):
            fn()
    rounds = [{name: time_ms(fn, device, 0, 1) for name, fn in fns.items()} for _ in range(repeats)]
    return {name: statistics.median(r[name] for r in rounds) for name in fns}


def repeated(fn, times):
    """fn called `times` times: a batch through an artefact that takes one image."""

    def run():
        for _ in range(times):
            fn()

    return run


def bench_deploy(args, device):
    """Prints the CPU inference table: our deployment paths at each of --precisions
    beside HF eager at each of --hf-precisions (float32, bfloat16 autocast), at each
    of --infer-batches; int8 is calibrated on --calibration-images generated images.
    Returns the rows (path, precision, batch, ms, img/s, vs HF fp32, vs HF best)."""
    import tempfile

    batch = max(args.infer_batches)
    images, boxes, classes = make_batch(
        batch, args.height, args.width, args.boxes, args.num_classes, seed=1
    )
    hf = build_hf(args.variant, args.num_classes, device).eval()
    hf_paths = {"hf eager": hf}
    if args.hf_compile:
        hf_paths["hf torch.compile"] = torch.compile(hf)
    paths, setup = {}, {}  # (path, precision, batch) -> fn; (path, precision) -> seconds
    for b in args.infer_batches:
        pv, pm, _ = hf_inputs(images[:b], boxes[:b], classes[:b], device, train=False)
        sizes = [(args.height, args.width)] * b
        for (name, module), precision in itertools.product(hf_paths.items(), args.hf_precisions):

            def hf_call(
                module=module,
                pv=pv,
                pm=pm,
                sizes=sizes,
                amp="bf16" if precision == "bf16" else "none",
            ):
                with torch.no_grad(), autocast(device, amp):
                    return hf_postprocess(module(pixel_values=pv, pixel_mask=pm), sizes)

            paths[(name, precision, b)] = hf_call
            if (name, precision) not in setup:  # the first call compiles
                start = time.perf_counter()
                hf_call() if name != "hf eager" else None
                setup[(name, precision)] = time.perf_counter() - start
    calibration = make_batch(
        args.calibration_images, args.height, args.width, 0, args.num_classes, seed=2
    )[0]
    with torch.no_grad(), tempfile.TemporaryDirectory() as workdir:
        for precision in args.precisions:
            model = build_ours(args.variant, "auto", args.num_classes, device, args.opts).eval()
            runners = deploy_runners(
                model, images[0], precision, workdir, calibration, args.fixed_size_package
            )
            for name, (seconds, fn) in runners.items():
                setup[(name, precision)] = seconds
                for b in args.infer_batches:
                    if name == "ours eager":
                        inputs = [{"image": image} for image in images[:b]]
                        paths[(name, precision, b)] = lambda m=model, x=inputs: m(x)
                    else:
                        paths[(name, precision, b)] = repeated(fn, b)
        times = interleaved_medians(paths, device, args.warmup, args.repeats)
    print()
    print(
        f"Inference, {args.height}x{args.width}, {torch.get_num_threads()} threads: "
        f"median ms per batch over {args.repeats} rounds, each path once per round, "
        f"after {args.warmup} warm-up calls. Ratios are HF ms / ms at the same batch "
        "(>1: faster than HF): vs HF fp32 (eager), and vs HF best (the fastest of HF's "
        f"paths timed: {', '.join(hf_paths)} at {', '.join(args.hf_precisions)}). "
        "Our eager model takes a batch as one list; the exported artefacts take one "
        "image, so a batch is that many calls. "
        "export/compile s is the one-off cost before the first run."
    )
    print()
    print("| path | precision | batch | ms | img/s | vs HF fp32 | vs HF best | export/compile s |")
    print("|---|---|---|---|---|---|---|---|")
    rows = []
    for (name, precision, b), ms in times.items():
        hf_fp32 = times[("hf eager", "fp32", b)]
        hf_best = min(times[(h, p, b)] for h in hf_paths for p in args.hf_precisions)
        row = (name, precision, b, ms, b * 1e3 / ms, hf_fp32 / ms, hf_best / ms)
        rows.append(row)
        print(
            f"| {name} | {precision} | {b} | {ms:.0f} | {row[4]:.2f} | {row[5]:.2f}x "
            f"| {row[6]:.2f}x | {setup[(name, precision)]:.0f} |"
        )
    return rows


# ----------------------------------------------------------------------------- main
def main():
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--variant", choices=sorted(VARIANTS), default="multi_scale")
    parser.add_argument("--batch", type=int, default=2, help="training batch (per GPU)")
    parser.add_argument("--infer-batches", type=int, nargs="+", default=[1, 4])
    parser.add_argument("--height", type=int, default=800)
    parser.add_argument("--width", type=int, default=1333)
    parser.add_argument("--boxes", type=int, default=8, help="random ground-truth boxes per image")
    parser.add_argument("--num-classes", type=int, default=80)
    parser.add_argument("--warmup", type=int, default=3)
    parser.add_argument("--repeats", type=int, default=10)
    parser.add_argument("--amp", choices=["none", "bf16"], default="none")
    parser.add_argument(
        "--models",
        nargs="+",
        default=["ours-cpp", "ours-numba", "hf"],
        choices=["ours-cpp", "ours-numba", "ours-torch", "hf"],
    )
    parser.add_argument("--seed", type=int, default=0)
    add_opts_argument(parser)
    parser.add_argument(
        "--deploy",
        action="store_true",
        help="CPU inference only: eager, torch.compile, ONNX Runtime, AOTInductor, HF eager",
    )
    parser.add_argument(
        "--precisions",
        nargs="+",
        choices=["fp32", "bf16", "int8"],
        default=["fp32"],
        help="--deploy: our paths at each inference precision (int8: torch.compile and aoti "
        "through PT2E quantization, and ONNX Runtime)",
    )
    parser.add_argument(
        "--hf-precisions",
        nargs="+",
        choices=["fp32", "bf16"],
        default=["fp32", "bf16"],
        help="--deploy: HF eager in float32 and under bfloat16 autocast (fp32 is required; "
        "drop bf16 on a CPU without AVX512-BF16 or AMX, where it is emulated and far slower)",
    )
    parser.add_argument(
        "--hf-compile",
        action="store_true",
        help="--deploy: also HF under torch.compile at each --hf-precisions (slower than HF "
        "eager on the CPUs measured, and minutes of compiling: off by default)",
    )
    parser.add_argument(
        "--fixed-size-package",
        action="store_true",
        help="--deploy: also the aoti package compiled for --height x --width only "
        "(tools/deploy/export_model.py --fixed-size)",
    )
    parser.add_argument(
        "--calibration-images",
        type=int,
        default=4,
        help="--deploy with int8: generated images that calibrate the quantized model",
    )
    parser.add_argument(
        "--reuse-freed-memory",
        action="store_true",
        help="malloc keeps freed memory for reuse (deformable_detr.engine.host_memory), "
        "for every model timed, HF's included: fewer page faults, on CPUs (glibc)",
    )
    args = parser.parse_args()
    if "fp32" not in args.hf_precisions:
        parser.error("--hf-precisions must include fp32: every ratio is to HF fp32")
    device = torch.device(args.device)
    torch.manual_seed(args.seed)
    if args.reuse_freed_memory:
        from deformable_detr.engine.host_memory import reuse_freed_memory

        if not reuse_freed_memory():
            parser.error("--reuse-freed-memory needs glibc's malloc")
    if device.type == "cuda":
        torch.backends.cudnn.benchmark = True

    import d2ext

    backends = d2ext.available_backends()
    versions = [f"torch {torch.__version__}"]
    try:
        import transformers

        versions.append(f"transformers {transformers.__version__}")
    except ImportError:
        versions.append("transformers missing")
    name = torch.cuda.get_device_name(device) if device.type == "cuda" else "cpu"
    print(f"device: {name}; {', '.join(versions)}")
    print(
        f"variant {args.variant} ({VARIANTS[args.variant]}), {args.num_classes} classes, "
        f"image {args.height}x{args.width}, {args.boxes} boxes/image, amp {args.amp}, "
        f"warmup {args.warmup}, repeats {args.repeats}, freed memory "
        f"{'reused' if args.reuse_freed_memory else 'returned (malloc as it is)'}"
    )

    if args.deploy:
        bench_deploy(args, device)
        return 0

    rows, notes, failed = [], [], False
    for kind in args.models:
        if kind.startswith("ours-"):
            backend = kind[len("ours-") :]
            info = backends[backend]
            if device.type not in info.devices:
                notes.append(
                    f"{kind}: skipped, backend {backend!r} does not run on {device.type} "
                    f"({info.detail})"
                )
                continue
        try:
            model = (
                build_hf(args.variant, args.num_classes, device)
                if kind == "hf"
                else build_ours(args.variant, backend, args.num_classes, device, args.opts)
            )
            row = {"model": kind, "params": trainable(model)}
            print(f"  {kind}: {row['params']:,} trainable parameters", flush=True)
            row["train_ms"], row["peak"] = bench_train(
                "hf" if kind == "hf" else "ours", model, args, device
            )
            for b in args.infer_batches:
                row[f"ips{b}"] = bench_infer(
                    "hf" if kind == "hf" else "ours", model, b, args, device
                )
            rows.append(row)
        except Exception as e:  # one model's failure must not lose the others' rows
            failed = True
            notes.append(
                f"{kind}: FAILED: {type(e).__name__}: {str(e).splitlines()[0] if str(e) else ''}"
            )
            import traceback

            traceback.print_exc()
        finally:
            model = None
            if device.type == "cuda":
                torch.cuda.empty_cache()

    hf = next((r for r in rows if r["model"] == "hf"), None)

    def ratio(r, key, inverse=False):
        if hf is None or r[key] is None or hf[key] is None:
            return ""
        x = hf[key] / r[key] if inverse else r[key] / hf[key]
        return f" ({x:.2f}x)"

    print()
    print(
        f"Training, batch {args.batch}, {args.height}x{args.width}: "
        f"forward + loss + backward + AdamW step, "
        f"median ms (ratio hf/ours: >1 means ours is faster); peak memory (ratio ours/hf). "
        f"Inference images/s, eval, forward + top-100 post-processing for both (ratio ours/hf)."
    )
    print()
    head = ["model", "trainable params", f"train ms (batch {args.batch})", "train peak MiB"]
    head += [f"infer img/s (batch {b})" for b in args.infer_batches]
    print("| " + " | ".join(head) + " |")
    print("|" + "---|" * len(head))
    for r in rows:
        peak = "n/a (cpu)" if r["peak"] is None else f"{r['peak'] / 2**20:.0f}{ratio(r, 'peak')}"
        cells = [
            r["model"],
            f"{r['params']:,}",
            f"{r['train_ms']:.1f}{ratio(r, 'train_ms', inverse=True)}",
            peak,
        ]
        cells += [f"{r[f'ips{b}']:.2f}{ratio(r, f'ips{b}')}" for b in args.infer_batches]
        print("| " + " | ".join(cells) + " |")
    for n in notes:
        print(f"- {n}")
    sys.exit(1 if failed else 0)


if __name__ == "__main__":
    main()
