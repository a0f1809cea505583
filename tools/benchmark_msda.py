"""Benchmarks the MSDA op: backend x case x dtype -> forward ms,
forward+backward ms, and peak memory, printed as a Markdown table.

    python tools/benchmark_msda.py                      # CUDA when available, else CPU
    python tools/benchmark_msda.py --device cpu --repeats 20
    python tools/benchmark_msda.py --batch 8 --official-src /tmp/official_msda   # CUDA only

Cases follow Deformable DETR at COCO scale (N=2, M=8, D=32, L=4, P=4, levels
100x167, 50x84, 25x42, 13x21), encoder-like (Lq = S) and decoder-like (Lq = 300);
--batch sets N. On CPU the image is 4x smaller per side (levels 25x42, 13x21,
7x11, 4x6). Times are medians; CUDA times come from CUDA events after warm-up.
Peak memory is what the timed call allocates beyond its inputs:
torch.cuda.max_memory_allocated on CUDA, and on CPU the growth of the peak
resident set (VmHWM) of a fresh process (Linux).

--clock thread (with --device cpu --threads 1) times each call in the CPU time of
the calling thread instead of wall-clock time: on a machine shared with other work,
the time the op computed rather than the time it waited.

--cpu-capabilities avx512 avx2 default times the `cpp` backend's CPU kernels of
each instruction set named, each in a fresh process with D2EXT_CPU_CAPABILITY
set (rows `cpp (avx512)`, ...); a set the CPU lacks is reported and left out.

Each case and dtype starts with a `floor` row: the fewest bytes a pass must move
through memory, and the time that takes at the copy bandwidth measured once at
start (a large device-to-device copy, bytes read plus bytes written). Forward:
value, locations and weights read once, the output written once. Forward+backward
adds reading those inputs and grad_output once more and writing their three
gradients once. No kernel runs faster than its floor; the sampling's scattered
reads make the real minimum higher.

--official-src DIR JIT-builds the official Deformable-DETR CUDA kernel
(fundamentalvision/Deformable-DETR, models/ops/src; DIR is that folder or a tree
holding it, patched for current PyTorch: tools/gpu_suite/stage_official_msda.sh
--patch) and adds an `official` row (float32 only; im2col_step 64: the kernel
takes min(N, 64) batch items at a time, which must divide N). The kernel is
checked first against the float64 reference; if its output or a gradient is
off by more than 1e-4 (relative), it is left out of the table and the script
exits with status 1 after the table.
"""

import argparse
import functools
import multiprocessing
import os
import runpy
import sys
import time
from pathlib import Path

import torch
from torch.autograd.function import once_differentiable

import d2ext
from d2ext.reference import ms_deform_attn_reference
from d2ext.timing import time_ms

LEVELS = {
    "cuda": [(100, 167), (50, 84), (25, 42), (13, 21)],
    "cpu": [(25, 42), (13, 21), (7, 11), (4, 6)],
}
N, M, D, P = 2, 8, 32, 4
DTYPES = {
    "float32": torch.float32,
    "float64": torch.float64,
    "float16": torch.float16,
    "bfloat16": torch.bfloat16,
}
OFFICIAL_IM2COL_STEP = (
    64  # upstream's default; the kernel cuts it to the batch, which it must then divide
)
_official = None  # the official extension module, once load_official has built it
CLOCKS = {"wall": time.perf_counter, "thread": time.thread_time}


def make_case(case, device, dtype, batch=N):
    shapes = torch.tensor(LEVELS[device.type], dtype=torch.int64, device=device)
    areas = shapes.prod(1)
    starts = torch.cat([areas.new_zeros(1), areas.cumsum(0)[:-1]])
    S = int(areas.sum())
    Lq = S if case == "encoder" else 300
    L = shapes.shape[0]
    value = torch.randn(batch, S, M, D, device=device, dtype=dtype, requires_grad=True)
    locations = torch.rand(batch, Lq, M, L, P, 2, device=device, requires_grad=True)
    weights = torch.rand(batch, Lq, M, L, P, device=device).softmax(-1).requires_grad_()
    return value, shapes, starts, locations, weights


class OfficialMSDA(torch.autograd.Function):
    """The official kernel behind autograd, as upstream's MSDeformAttnFunction."""

    @staticmethod
    def forward(ctx, value, shapes, starts, locations, weights):
        ctx.save_for_backward(value, shapes, starts, locations, weights)
        return _official.ms_deform_attn_forward(
            value, shapes, starts, locations, weights, OFFICIAL_IM2COL_STEP
        )

    @staticmethod
    @once_differentiable
    def backward(ctx, grad_output):
        grad_value, grad_locations, grad_weights = _official.ms_deform_attn_backward(
            *ctx.saved_tensors, grad_output.contiguous(), OFFICIAL_IM2COL_STEP
        )
        return grad_value, None, None, grad_locations, grad_weights


# The reference called directly: autograd records grid_sample and keeps every
# sampled value for the backward, as the official release's PyTorch path
# (ms_deform_attn_core_pytorch) does. The "torch" backend runs the same reference
# inside the custom op, with an explicit backward that recomputes the samples.
AUTOGRAD = "torch-autograd"


def attention_fn(backend):
    if backend == "official":
        return OfficialMSDA.apply
    if backend == AUTOGRAD:
        return ms_deform_attn_reference
    return functools.partial(d2ext.ms_deform_attn, backend=backend)


def run_once(inputs, backend, backward):
    value, shapes, starts, locations, weights = inputs
    output = attention_fn(backend)(value, shapes, starts, locations, weights)
    if backward:
        torch.autograd.grad(output, (value, locations, weights), torch.ones_like(output))


def load_official(src, verbose=False):
    """JIT-builds the official kernel (vision.cpp + cuda/ms_deform_attn_cuda.cu) from src."""
    global _official
    src = Path(src).resolve()
    if (src / "models" / "ops" / "src").is_dir():
        src = src / "models" / "ops" / "src"
    # setup.py's toolkit choice and header dirs, so that both kernels build alike
    build = runpy.run_path(
        str(Path(__file__).resolve().parents[1] / "setup.py"), run_name="build_helpers"
    )
    from torch.utils import cpp_extension

    flags = ["-O3", "-DWITH_CUDA"]
    cuda_flags = flags + [  # upstream's setup.py flags
        "-DCUDA_HAS_FP16=1",
        "-D__CUDA_NO_HALF_OPERATORS__",
        "-D__CUDA_NO_HALF_CONVERSIONS__",
        "-D__CUDA_NO_HALF2_OPERATORS__",
    ]
    for include in build["cuda_library_include_dirs"]():
        cuda_flags += ["-isystem", include]
    _official = cpp_extension.load(
        name="MultiScaleDeformableAttention",
        sources=[str(src / "vision.cpp"), str(src / "cuda" / "ms_deform_attn_cuda.cu")],
        extra_include_paths=[str(src)],
        extra_cflags=flags,
        extra_cuda_cflags=cuda_flags,
        verbose=verbose,
    )
    return _official


def relative_errors(backend, device, batch):
    """||x - ref|| / ||ref|| of the output and the three gradients against the
    float64 reference, on the float32 decoder case with a random grad_output."""
    inputs = make_case("decoder", device, torch.float32, batch)
    value, shapes, starts, locations, weights = inputs
    output = attention_fn(backend)(*inputs)
    grad_output = torch.randn_like(output)
    results = (output,) + torch.autograd.grad(output, (value, locations, weights), grad_output)
    exact = [t.detach().double().requires_grad_() for t in (value, locations, weights)]
    expected = ms_deform_attn_reference(exact[0], shapes, starts, exact[1], exact[2])
    expected = (expected.detach(),) + torch.autograd.grad(expected, exact, grad_output.double())
    return [float((r.detach().double() - e).norm() / e.norm()) for r, e in zip(results, expected)]


def copy_bandwidth(device, warmup, repeats):
    """Bytes per second of a large copy within the device, counting bytes read plus written."""
    numel = 2**28 if device.type == "cuda" else 2**26  # 1 GiB of float32 on CUDA, 256 MiB on CPU
    source = torch.randn(numel, device=device)
    target = torch.empty_like(source)
    ms = time_ms(lambda: target.copy_(source), device, warmup, repeats)
    return 2 * source.numel() * source.element_size() / (ms * 1e-3)


def floor_bytes(inputs):
    """The fewest bytes (forward, forward+backward) must move; see the docstring at top."""
    value, _, _, locations, weights = inputs
    read = sum(t.numel() * t.element_size() for t in (value, locations, weights))
    output = (
        locations.shape[0]
        * locations.shape[1]
        * value.shape[2]
        * value.shape[3]
        * value.element_size()
    )
    forward = read + output
    backward = (
        read + output + read
    )  # inputs and grad_output read; three gradients of the inputs' sizes written
    return forward, forward + backward


def _status_kib(field):
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1])
    raise RuntimeError(f"no {field} in /proc/self/status")


CAPABILITY_ENV_VAR = "D2EXT_CPU_CAPABILITY"


def _cpu_peak_child(args, queue):
    case, dtype_name, backend, batch, threads = args
    torch.set_num_threads(threads)
    inputs = make_case(case, torch.device("cpu"), DTYPES[dtype_name], batch)
    run_once(inputs, backend, backward=True)  # first calls load code and start threads
    before = _status_kib("VmRSS")
    Path("/proc/self/clear_refs").write_text("5")  # resets VmHWM, the peak resident set, to now
    run_once(inputs, backend, backward=True)
    queue.put((_status_kib("VmHWM") - before) * 1024)


def _cpu_times_child(args, queue):
    """(the CPU kernels' instruction set, forward ms, forward+backward ms) of `cpp`."""
    case, dtype_name, batch, warmup, repeats, threads, clock = args
    from d2ext import _C

    torch.set_num_threads(threads)
    inputs = make_case(case, torch.device("cpu"), DTYPES[dtype_name], batch)
    timing = dict(device="cpu", warmup=warmup, repeats=repeats, cpu_clock=CLOCKS[clock])
    forward = time_ms(lambda: run_once(inputs, "cpp", False), **timing)
    both = time_ms(lambda: run_once(inputs, "cpp", True), **timing)
    queue.put((_C.cpu_capability(), forward, both))


def in_fresh_process(target, args, capability=None):
    """target(args, queue) in a spawned process, with D2EXT_CPU_CAPABILITY=capability
    when one is given; returns what it puts on the queue."""
    saved = os.environ.get(CAPABILITY_ENV_VAR)
    if capability is not None:
        os.environ[CAPABILITY_ENV_VAR] = capability
    try:
        context = multiprocessing.get_context("spawn")  # the child copies the environment now
        queue = context.Queue()
        process = context.Process(target=target, args=(args, queue))
        process.start()
    finally:
        if saved is None:
            os.environ.pop(CAPABILITY_ENV_VAR, None)
        else:
            os.environ[CAPABILITY_ENV_VAR] = saved
    result = queue.get()
    process.join()
    return result


def peak_bytes(case, dtype_name, backend, device, batch, capability=None):
    if device.type == "cuda":
        inputs = make_case(case, device, DTYPES[dtype_name], batch)
        torch.cuda.synchronize()
        base = torch.cuda.memory_allocated()
        torch.cuda.reset_peak_memory_stats()
        run_once(inputs, backend, backward=True)
        torch.cuda.synchronize()
        return torch.cuda.max_memory_allocated() - base
    # a fresh process, so that earlier cases do not hide this one's peak
    args = (case, dtype_name, backend, batch, torch.get_num_threads())
    return in_fresh_process(_cpu_peak_child, args, capability)


def runs(backend, dtype_name):
    if backend == "numba":
        return DTYPES[dtype_name] in (torch.float32, torch.float64)
    if backend == "official":
        return dtype_name == "float32"
    return True


def main():
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument(
        "--backends",
        nargs="+",
        default=None,
        help=f"default: every backend that runs on the device, and {AUTOGRAD}",
    )
    parser.add_argument(
        "--dtypes",
        nargs="+",
        default=None,
        choices=sorted(DTYPES),
        help="default: float32 (and bfloat16 on CUDA)",
    )
    parser.add_argument(
        "--cases", nargs="+", default=["encoder", "decoder"], choices=["encoder", "decoder"]
    )
    parser.add_argument(
        "--batch", type=int, default=N, help="N, the batch size (default: %(default)s)"
    )
    parser.add_argument(
        "--official-src",
        metavar="DIR",
        default=None,
        help="build the official Deformable-DETR CUDA kernel from DIR and add an `official` row",
    )
    parser.add_argument(
        "--cpu-capabilities",
        nargs="+",
        default=None,
        choices=["avx512", "avx2", "default"],
        help="time the cpp backend's CPU kernels of each of these instruction sets, each in a "
        "fresh process (default: only the set this CPU runs best, in this process)",
    )
    parser.add_argument(
        "--threads",
        type=int,
        default=None,
        help="CPU threads (torch.set_num_threads; default: torch's, one per core)",
    )
    parser.add_argument(
        "--clock",
        choices=sorted(CLOCKS),
        default="wall",
        help="CPU timing: wall-clock time, or the calling thread's CPU time (needs --threads 1)",
    )
    parser.add_argument("--warmup", type=int, default=3)
    parser.add_argument("--repeats", type=int, default=10)
    args = parser.parse_args()

    device = torch.device(args.device)
    if args.threads is not None:
        torch.set_num_threads(args.threads)
    if args.clock == "thread" and (device.type != "cpu" or torch.get_num_threads() != 1):
        parser.error("--clock thread needs --device cpu and --threads 1")
    official_ok = True
    available = d2ext.available_backends()
    backends = args.backends or [
        name
        for name, info in available.items()
        if device.type in info.devices and not (name == "numba" and device.type == "cpu")
    ]
    if args.backends is None:
        backends.append(AUTOGRAD)
    details = {name: available[name].detail for name in backends if name in available}
    if AUTOGRAD in backends:
        details[AUTOGRAD] = (
            "the reference under plain autograd, as the official release's PyTorch path"
        )
    if args.official_src:
        if device.type != "cuda":
            parser.error("--official-src needs --device cuda")
        load_official(args.official_src)
        errors = relative_errors("official", device, args.batch)
        official_ok = all(e < 1e-4 for e in errors)  # False for NaN too
        backends = [b for b in backends if b != "official"] + (["official"] if official_ok else [])
        details["official"] = (
            f"Deformable-DETR's CUDA kernel from {args.official_src}, im2col_step "
            f"{OFFICIAL_IM2COL_STEP}; vs float64 reference (output, grad value, "
            f"locations, weights): {', '.join(f'{e:.1e}' for e in errors)}"
            + ("" if official_ok else " -- FAILS the 1e-4 check, not timed")
        )
    elif "official" in backends:
        parser.error("the `official` backend needs --official-src DIR")
    rows = [(backend, None) for backend in backends]
    if args.cpu_capabilities:
        if device.type != "cpu" or "cpp" not in backends:
            parser.error("--cpu-capabilities needs --device cpu and the cpp backend")
        position = backends.index("cpp")
        rows[position : position + 1] = [("cpp", c) for c in args.cpu_capabilities]
        for capability in args.cpu_capabilities:
            details[f"cpp ({capability})"] = (
                f"the cpp backend in a fresh process with {CAPABILITY_ENV_VAR}={capability}"
            )
        details.pop("cpp")
    dtypes = args.dtypes or (["float32", "bfloat16"] if device.type == "cuda" else ["float32"])
    name = (
        torch.cuda.get_device_name(device)
        if device.type == "cuda"
        else f"CPU, {torch.get_num_threads()} threads"
    )
    bandwidth = copy_bandwidth(device, args.warmup, args.repeats)
    print(
        f"device: {name}; torch {torch.__version__}; levels {LEVELS[device.type]}; "
        f"N={args.batch} M={M} D={D} P={P}; clock: {args.clock}"
    )
    print(f"copy bandwidth (read + write): {bandwidth / 1e9:.0f} GB/s")
    for backend in details:
        print(f"  {backend}: {details[backend]}")
    print()
    print("| backend | case | Lq | dtype | forward ms | forward+backward ms | peak memory MiB |")
    print("|---|---|---|---|---|---|---|")
    for case in args.cases:
        for dtype_name in dtypes:
            inputs = make_case(case, device, DTYPES[dtype_name], args.batch)
            Lq = inputs[3].shape[1]
            forward_bytes, both_bytes = floor_bytes(inputs)
            print(
                f"| floor: {forward_bytes / 1e6:.1f} / {both_bytes / 1e6:.1f} MB "
                f"at {bandwidth / 1e9:.0f} GB/s "
                f"| {case} | {Lq} | {dtype_name} | {forward_bytes / bandwidth * 1e3:.3f} "
                f"| {both_bytes / bandwidth * 1e3:.3f} | — |",
                flush=True,
            )
            for backend, capability in rows:
                if not runs(backend, dtype_name):
                    continue
                name = backend
                if capability is None:
                    timing = dict(
                        device=device,
                        warmup=args.warmup,
                        repeats=args.repeats,
                        cpu_clock=CLOCKS[args.clock],
                    )
                    forward = time_ms(lambda: run_once(inputs, backend, False), **timing)
                    both = time_ms(lambda: run_once(inputs, backend, True), **timing)
                else:
                    name = f"cpp ({capability})"
                    ran, forward, both = in_fresh_process(
                        _cpu_times_child,
                        (
                            case,
                            dtype_name,
                            args.batch,
                            args.warmup,
                            args.repeats,
                            torch.get_num_threads(),
                            args.clock,
                        ),
                        capability,
                    )
                    if ran != capability:
                        print(f"| {name} | {case} | {Lq} | {dtype_name} | this CPU lacks it | | |")
                        continue
                peak = peak_bytes(case, dtype_name, backend, device, args.batch, capability)
                print(
                    f"| {name} | {case} | {Lq} | {dtype_name} "
                    f"| {forward:.2f} | {both:.2f} | {peak / 2**20:.1f} |",
                    flush=True,
                )
    return 0 if official_ok else 1


if __name__ == "__main__":
    sys.exit(main())
