"""Timing of a callable for the benchmarks: CUDA events on CUDA, perf_counter on CPU."""

import statistics
import time

import torch


def time_ms(fn, device, warmup: int, repeats: int, cpu_clock=time.perf_counter) -> float:
    """Median milliseconds of fn() over `repeats` calls after `warmup` untimed ones;
    on CUDA each call is timed with events and synchronized, on CPU with `cpu_clock`
    (wall-clock time by default; time.thread_time counts only the CPU time of the
    calling thread, which is the whole call when torch runs one thread)."""
    device = torch.device(device)
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
            t0 = cpu_clock()
            fn()
            times.append((cpu_clock() - t0) * 1e3)
    return statistics.median(times)
