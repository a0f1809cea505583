"""Timing of a callable for the benchmarks: CUDA events on CUDA, perf_counter on CPU."""

import statistics
import time

import torch


def time_ms(fn, device, warmup: int, repeats: int) -> float:
    """Median milliseconds of fn() over `repeats` calls after `warmup` untimed ones;
    on CUDA each call is timed with events and synchronized."""
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
            t0 = time.perf_counter()
            fn()
            times.append((time.perf_counter() - t0) * 1e3)
    return statistics.median(times)
