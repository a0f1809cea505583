"""Benchmarks the MSDA op: backend x case x dtype -> forward ms,
forward+backward ms, and peak memory, printed as a Markdown table.

    python tools/benchmark_msda.py                      # CUDA when available, else CPU
    python tools/benchmark_msda.py --device cpu --repeats 20

Cases follow Deformable DETR at COCO scale (N=2, M=8, D=32, L=4, P=4, levels
100x167, 50x84, 25x42, 13x21), encoder-like (Lq = S) and decoder-like (Lq = 300).
On CPU the image is 4x smaller per side (levels 25x42, 13x21, 7x11, 4x6).
Times are medians; CUDA times come from CUDA events after warm-up. Peak memory is
what the timed call allocates beyond its inputs: torch.cuda.max_memory_allocated
on CUDA, and on CPU the growth of the peak resident set (VmHWM) of a fresh process (Linux).
"""
import argparse
import multiprocessing
import statistics
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
import d2ext  # noqa: E402

LEVELS = {
    "cuda": [(100, 167), (50, 84), (25, 42), (13, 21)],
    "cpu": [(25, 42), (13, 21), (7, 11), (4, 6)],
}
N, M, D, P = 2, 8, 32, 4
DTYPES = {"float32": torch.float32, "float64": torch.float64, "float16": torch.float16, "bfloat16": torch.bfloat16}


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


def run_once(inputs, backend, backward):
    value, shapes, starts, locations, weights = inputs
    output = d2ext.ms_deform_attn(value, shapes, starts, locations, weights, backend=backend)
    if backward:
        torch.autograd.grad(output, (value, locations, weights), torch.ones_like(output))


def time_ms(fn, device, warmup, repeats):
    for _ in range(warmup):
        fn()
    times = []
    for _ in range(repeats):
        if device.type == "cuda":
            start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
            start.record()
            fn()
            end.record()
            torch.cuda.synchronize()
            times.append(start.elapsed_time(end))
        else:
            t0 = time.perf_counter()
            fn()
            times.append((time.perf_counter() - t0) * 1e3)
    return statistics.median(times)


def _status_kib(field):
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1])
    raise RuntimeError(f"no {field} in /proc/self/status")


def _cpu_peak_child(args, queue):
    case, dtype_name, backend = args
    inputs = make_case(case, torch.device("cpu"), DTYPES[dtype_name])
    run_once(inputs, backend, backward=True)  # first calls load code and start threads
    before = _status_kib("VmRSS")
    Path("/proc/self/clear_refs").write_text("5")  # resets VmHWM, the peak resident set, to now
    run_once(inputs, backend, backward=True)
    queue.put((_status_kib("VmHWM") - before) * 1024)


def peak_bytes(case, dtype_name, backend, device):
    if device.type == "cuda":
        inputs = make_case(case, device, DTYPES[dtype_name])
        torch.cuda.synchronize()
        base = torch.cuda.memory_allocated()
        torch.cuda.reset_peak_memory_stats()
        run_once(inputs, backend, backward=True)
        torch.cuda.synchronize()
        return torch.cuda.max_memory_allocated() - base
    # a fresh process, so that earlier cases do not hide this one's peak
    context = multiprocessing.get_context("spawn")
    queue = context.Queue()
    process = context.Process(target=_cpu_peak_child, args=((case, dtype_name, backend), queue))
    process.start()
    result = queue.get()
    process.join()
    return result


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--backends", nargs="+", default=None, help="default: every backend that runs on the device")
    parser.add_argument("--dtypes", nargs="+", default=None, choices=sorted(DTYPES),
                        help="default: float32 (and bfloat16 on CUDA)")
    parser.add_argument("--cases", nargs="+", default=["encoder", "decoder"], choices=["encoder", "decoder"])
    parser.add_argument("--warmup", type=int, default=3)
    parser.add_argument("--repeats", type=int, default=10)
    args = parser.parse_args()

    device = torch.device(args.device)
    available = d2ext.available_backends()
    backends = args.backends or [
        name for name, info in available.items()
        if device.type in info.devices and not (name == "numba" and device.type == "cpu")
    ]
    dtypes = args.dtypes or (["float32", "bfloat16"] if device.type == "cuda" else ["float32"])
    name = torch.cuda.get_device_name(device) if device.type == "cuda" else f"CPU, {torch.get_num_threads()} threads"
    print(f"device: {name}; torch {torch.__version__}; levels {LEVELS[device.type]}; N={N} M={M} D={D} P={P}")
    for backend in backends:
        print(f"  {backend}: {available[backend].detail}")
    print()
    print("| backend | case | Lq | dtype | forward ms | forward+backward ms | peak memory MiB |")
    print("|---|---|---|---|---|---|---|")
    for case in args.cases:
        for dtype_name in dtypes:
            for backend in backends:
                if backend == "numba" and DTYPES[dtype_name] not in (torch.float32, torch.float64):
                    continue
                inputs = make_case(case, device, DTYPES[dtype_name])
                forward = time_ms(lambda: run_once(inputs, backend, False), device, args.warmup, args.repeats)
                both = time_ms(lambda: run_once(inputs, backend, True), device, args.warmup, args.repeats)
                peak = peak_bytes(case, dtype_name, backend, device) / 2**20
                Lq = inputs[3].shape[1]
                print(f"| {backend} | {case} | {Lq} | {dtype_name} | {forward:.2f} | {both:.2f} | {peak:.1f} |", flush=True)


if __name__ == "__main__":
    main()
