"""Where the time of our compiled CPU inference goes: torch.profiler over calls of
compile_inference(ImageToDetections(model)) (the deployment benchmark's
torch.compile path, with the aoti package's Inductor options: freezing), grouped by
kind of work, then the slowest kernels that Inductor generated.

    python tools/profile_inference.py --precision bf16
    # the same without Inductor freezing (weights as graph inputs)
    python tools/profile_inference.py --precision bf16 --no-freezing
    # the PT2E int8 graph (deformable_detr.export.pt2e_int8), calibrated on 4 random images
    python tools/profile_inference.py --precision int8
    # malloc keeping freed memory (no page faults of the buffers at each call)
    python tools/profile_inference.py --precision int8 --reuse-freed-memory
    # and the reorders oneDNN runs in one call (weights repacked at every call among them)
    python tools/profile_inference.py --precision int8 --onednn-reorders
    # the encoder FFN's rows in 4 blocks (any config override of the model)
    python tools/profile_inference.py --precision int8 \\
        --opts model.transformer.encoder_ffn_row_blocks=4
    # smoke test
    python tools/profile_inference.py --height 128 --width 160 --calls 1

The model is benchmark_model.py's (--variant's COCO config, random weights, 80
classes) on a random 0-255 image of --height x --width. Prints the page faults and
system CPU time per call (the kernel's share: buffers malloc took from the system
afresh), then three Markdown tables: self CPU time per call of each kind of work,
Inductor's kernels by self time (their names list the operations each one fuses),
and the other operators by self time (the wrapper of Inductor's graph among them);
with --onednn-reorders, a fourth: the reorders oneDNN ran in one more call, read from
its verbose output. A weight packed at compile time should not appear there: a
weight's dims (output channels first) in that table mean it is repacked at every call.
"""

import argparse
import contextlib
import ctypes
import os
import re
import resource
import sys
import tempfile
import time
from collections import defaultdict

import torch

GENERATED_KERNEL = r"^(graph_\d+_)?cpp_fused"  # with cpp.enable_kernel_profile
# kind of work -> pattern of profiler event names, tried in this order (the names of
# Inductor's kernels list the operations they fuse, copies among them)
KINDS = [
    ("Inductor-generated code", GENERATED_KERNEL + "|CompiledFxGraph"),
    ("MSDA op", r"^d2ext"),
    ("matrix products", r"linear|addmm|(^|::)b?mm$|matmul"),
    ("convolutions", r"convolution|qconv"),
    ("attention (SDPA)", r"scaled_dot_product"),
    ("copies", r"copy_|_to_copy|clone|contiguous"),
]


def kind_of(name: str) -> str:
    for kind, pattern in KINDS:
        if re.search(pattern, name):
            return kind
    return "other"


def profile(fn, calls):
    """torch.profiler's averages (self CPU time) over `calls` calls of fn()."""
    with torch.profiler.profile(activities=[torch.profiler.ProfilerActivity.CPU]) as prof:
        for _ in range(calls):
            fn()
    return prof.key_averages()


def by_kind(events, calls):
    """kind -> (ms per call, event calls per call), self CPU time."""
    totals = defaultdict(lambda: [0.0, 0])
    for event in events:
        total = totals[kind_of(event.key)]
        total[0] += event.self_cpu_time_total / 1000 / calls
        total[1] += event.count // calls
    return dict(totals)


def print_kinds(totals):
    whole = sum(ms for ms, _ in totals.values())
    print("| kind of work | ms per call | share | calls |")
    print("|---|---|---|---|")
    for kind, (ms, count) in sorted(totals.items(), key=lambda item: -item[1][0]):
        print(f"| {kind} | {ms:.1f} | {100 * ms / whole:.0f}% | {count} |")
    print(f"| total | {whole:.1f} | 100% | |")


def print_slowest(events, calls, top, generated):
    """The `top` events by self time: Inductor's kernels if `generated`, else the
    operators it calls (convolutions, matrix products, the MSDA op, ...)."""
    chosen = sorted(
        (e for e in events if bool(re.search(GENERATED_KERNEL, e.key)) == generated),
        key=lambda e: -e.self_cpu_time_total,
    )
    print(f"| {'Inductor kernel' if generated else 'operator'} | ms per call | calls |")
    print("|---|---|---|")
    for event in chosen[:top]:
        name = event.key if len(event.key) <= 90 else event.key[:87] + "..."
        ms = event.self_cpu_time_total / 1000 / calls
        print(f"| `{name}` | {ms:.1f} | {event.count // calls} |")


@contextlib.contextmanager
def written_to_stdout():
    """Collects what C libraries (and Python) write to file descriptor 1 inside the
    block into the list it yields, as one string."""
    written = []
    sys.stdout.flush()
    saved = os.dup(1)
    with tempfile.TemporaryFile() as sink:
        os.dup2(sink.fileno(), 1)
        try:
            yield written
        finally:
            sys.stdout.flush()
            ctypes.CDLL(None).fflush(None)
            os.dup2(saved, 1)
            os.close(saved)
            sink.seek(0)
            written.append(sink.read().decode(errors="replace"))


def onednn_reorders(fn):
    """{(source layout -> destination layout, dims): [count, ms]} of the reorders oneDNN
    executes in fn(), from its verbose output."""
    with written_to_stdout() as written:
        with torch.backends.mkldnn.verbose(torch.backends.mkldnn.VERBOSE_ON):
            fn()
    reorders = defaultdict(lambda: [0, 0.0])
    for line in written[0].splitlines():
        fields = line.split(",")
        if not line.startswith("onednn_verbose") or fields[3:6] != ["exec", "cpu", "reorder"]:
            continue
        layouts = next(field for field in fields if field.startswith("src:"))
        entry = reorders[(layouts.replace(" dst:", " -> "), fields[-2])]
        entry[0] += 1
        entry[1] += float(fields[-1])
    return dict(reorders)


def print_reorders(reorders):
    print("| oneDNN reorder in one call | dims | count | ms |")
    print("|---|---|---|---|")
    for (layouts, dims), (count, ms) in sorted(reorders.items(), key=lambda item: -item[1][1]):
        print(f"| `{layouts}` | {dims} | {count} | {ms:.1f} |")
    if not reorders:
        print("| none | | | |")


def main(argv=None):
    # this folder's: the deployment benchmark's model and its config overrides
    from benchmark_model import add_opts_argument, build_ours

    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument(
        "--variant", choices=("multi_scale", "box_refine", "two_stage"), default="multi_scale"
    )
    parser.add_argument("--precision", choices=("fp32", "bf16", "int8"), default="bf16")
    parser.add_argument(
        "--calibration-images", type=int, default=4, help="int8: random images to calibrate on"
    )
    parser.add_argument("--height", type=int, default=800)
    parser.add_argument("--width", type=int, default=1333)
    parser.add_argument("--no-freezing", action="store_true", help="weights stay graph inputs")
    add_opts_argument(parser)
    parser.add_argument("--warmup", type=int, default=2, help="calls after the compiling one")
    parser.add_argument("--calls", type=int, default=3, help="profiled calls")
    parser.add_argument("--top", type=int, default=15, help="kernels and operators listed")
    parser.add_argument(
        "--reuse-freed-memory",
        action="store_true",
        help="malloc keeps freed memory for reuse (deformable_detr.engine.host_memory)",
    )
    parser.add_argument(
        "--onednn-reorders",
        action="store_true",
        help="then list the reorders oneDNN runs in one more call (from its verbose output)",
    )
    args = parser.parse_args(argv)
    if args.reuse_freed_memory:
        from deformable_detr.engine.host_memory import reuse_freed_memory

        if not reuse_freed_memory():
            parser.error("--reuse-freed-memory needs glibc's malloc")

    from deformable_detr.export import artefacts
    from deformable_detr.export.precision import set_inference_precision

    torch.manual_seed(0)
    model = build_ours(args.variant, "cpp", 80, "cpu", args.opts).eval()
    image = torch.rand(3, args.height, args.width) * 255
    module = artefacts.ImageToDetections(model)
    if args.precision == "int8":
        from deformable_detr.export.pt2e_int8 import quantize

        calibration = [torch.rand_like(image) * 255 for _ in range(args.calibration_images)]
        module = quantize(module, calibration)
    else:
        set_inference_precision(model, args.precision)
    options = {"freezing": not args.no_freezing, "cpp.enable_kernel_profile": True}
    compiled = artefacts.compile_inference(module, options)
    start = time.perf_counter()
    compiled(image)
    compile_s = time.perf_counter() - start
    for _ in range(args.warmup):
        compiled(image)
    before = resource.getrusage(resource.RUSAGE_SELF)
    start = time.perf_counter()
    events = profile(lambda: compiled(image), args.calls)
    wall_ms = (time.perf_counter() - start) * 1000 / args.calls
    after = resource.getrusage(resource.RUSAGE_SELF)
    faults = (after.ru_minflt - before.ru_minflt) / args.calls
    system_ms = (after.ru_stime - before.ru_stime) * 1000 / args.calls

    print(
        f"{args.variant}{''.join(' ' + opt for opt in args.opts)}, {args.precision}, "
        f"{args.height}x{args.width}, freezing "
        f"{'off' if args.no_freezing else 'on'}, freed memory "
        f"{'reused' if args.reuse_freed_memory else 'returned'}, "
        f"{torch.get_num_threads()} threads: "
        f"compiled in {compile_s:.0f} s, {wall_ms:.0f} ms per profiled call "
        f"(mean of {args.calls}); per call {faults:.0f} page faults, {system_ms:.0f} ms of "
        "system CPU time (all threads)\n"
    )
    print_kinds(by_kind(events, args.calls))
    print()
    print_slowest(events, args.calls, args.top, generated=True)
    print()
    print_slowest(events, args.calls, args.top, generated=False)
    if args.onednn_reorders:
        print()
        print_reorders(onednn_reorders(lambda: compiled(image)))


if __name__ == "__main__":
    main()
