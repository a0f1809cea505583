"""time_ms on CPU: wall-clock time by default, or the calling thread's CPU time."""

import time

from d2ext.timing import time_ms


def test_the_thread_clock_leaves_out_waiting():
    def wait():
        time.sleep(0.02)

    assert time_ms(wait, "cpu", warmup=0, repeats=3) >= 20
    assert time_ms(wait, "cpu", warmup=0, repeats=3, cpu_clock=time.thread_time) < 10
