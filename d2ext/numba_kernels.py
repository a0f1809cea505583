"""Multi-scale deformable attention forward and backward as Numba CUDA kernels.

A backend of the op specified by ``d2ext.reference.ms_deform_attn_reference``.
It runs on a GPU through ``numba.cuda`` and, with ``NUMBA_ENABLE_CUDASIM=1``,
on CPU tensors through Numba's CUDA simulator.

Each (n, q, m) triple is handled by a group of G consecutive lanes of a warp,
G = min(32, next power of two >= D); lane k handles channels k, k + G, ...
The backward kernel sums the per-lane partial gradients of the group through
shared memory rather than warp shuffles, because the simulator has no shuffles.
"""

import functools
import math

import torch

_THREADS = 256  # most threads per block; the backward reduction buffer has this many slots


try:
    # The simulator swaps the fake CUDA API in for module globals bound to
    # numba.cuda, so the kernels must reach it through this global.
    from numba import cuda
except Exception as e:  # a broken numba install can raise anything on import
    cuda = None
    _IMPORT_ERROR = f"numba.cuda cannot be imported: {type(e).__name__}: {e}"


def _simulated() -> bool:
    import numba

    return bool(numba.config.ENABLE_CUDASIM)


def is_available() -> tuple[bool, str]:
    """(True, "") if the kernels can run here, on a GPU or on the simulator,
    else (False, reason)."""
    if cuda is None:
        return False, _IMPORT_ERROR
    if _simulated():
        return True, ""
    try:
        if not cuda.is_available():
            return (
                False,
                "numba.cuda finds no usable GPU (set NUMBA_ENABLE_CUDASIM=1 for the simulator)",
            )
    except Exception as e:
        return False, f"numba.cuda is unusable: {type(e).__name__}: {e}"
    return True, ""


@functools.lru_cache(maxsize=None)
def _kernels(dtype_name: str):
    """The (forward, backward) kernels for value dtype "float32" or "float64".

    The kernels are built per dtype because the arithmetic must stay in that
    dtype (Numba promotes float32 mixed with an integer or a literal to float64)
    and the shared reduction buffer needs a dtype fixed at compile time.
    """
    import numba

    real = getattr(numba, dtype_name)

    @cuda.jit(device=True)
    def level_in_bounds(H, W, start, S):
        """Whether an H x W level starting at value row `start` lies within the S
        rows of value; a level that does not is skipped, so that no metadata can
        make the kernels read or write outside value (the Python entry point
        validates the levels with clear errors)."""
        return H > 0 and W > 0 and start >= 0 and start <= S and W <= (S - start) // H

    @cuda.jit(device=True)
    def bilinear(x, y, H, W, start):
        """Bilinear sampling of normalized (x, y) on an H x W level starting at value row `start`.

        Returns (r1, r2, r3, r4, w1, w2, w3, w4, lh, lw, outside): the value rows and the
        weights of corners (h_low, w_low), (h_low, w_low + 1), (h_low + 1, w_low),
        (h_low + 1, w_low + 1), with row -1 for a corner outside the level, the
        fractional parts of the pixel coordinate, and whether no corner is inside.
        """
        zero = real(0)
        one = real(1)
        half = real(0.5)
        h_im = y * real(H) - half
        w_im = x * real(W) - half
        # Also rejects NaN, and huge values before they reach floor.
        if not (h_im >= -one and h_im < real(H) and w_im >= -one and w_im < real(W)):
            return -1, -1, -1, -1, zero, zero, zero, zero, zero, zero, True
        h_low = int(math.floor(h_im))
        w_low = int(math.floor(w_im))
        lh = h_im - real(h_low)
        lw = w_im - real(w_low)
        hh = one - lh
        hw = one - lw
        # h_low < H and w_low < W hold in exact arithmetic; rounding could break them
        top = h_low >= 0 and h_low < H
        bottom = h_low + 1 < H
        left = w_low >= 0 and w_low < W
        right = w_low + 1 < W
        row = start + h_low * W + w_low
        r1 = row if top and left else -1
        r2 = row + 1 if top and right else -1
        r3 = row + W if bottom and left else -1
        r4 = row + W + 1 if bottom and right else -1
        return r1, r2, r3, r4, hh * hw, hh * lw, lh * hw, lh * lw, lh, lw, False

    @cuda.jit(device=True)
    def outside_sample(x, y):
        """The sample of a location with no corner inside the map: 0, or NaN when
        x or y is not finite (as grid_sample gives)."""
        return (x - x) + (y - y)

    @cuda.jit
    def forward_kernel(
        value, spatial_shapes, level_start_index, sampling_locations, attention_weights, output, G
    ):
        N, _, M, D = value.shape
        Lq, L, P = (
            sampling_locations.shape[1],
            sampling_locations.shape[3],
            sampling_locations.shape[4],
        )
        tid = cuda.grid(1)
        item = tid // G
        if item >= N * Lq * M:
            return
        m = item % M
        q = item // M % Lq
        n = item // (M * Lq)
        S = value.shape[1]
        for d in range(tid % G, D, G):
            acc = real(0)
            for lvl in range(L):
                H = spatial_shapes[lvl, 0]
                W = spatial_shapes[lvl, 1]
                start = level_start_index[lvl]
                if not level_in_bounds(H, W, start, S):
                    continue
                for p in range(P):
                    x = sampling_locations[n, q, m, lvl, p, 0]
                    y = sampling_locations[n, q, m, lvl, p, 1]
                    r1, r2, r3, r4, w1, w2, w3, w4, lh, lw, outside = bilinear(x, y, H, W, start)
                    if outside:  # adds 0, or NaN for a location or weight that is not finite
                        acc += attention_weights[n, q, m, lvl, p] * outside_sample(x, y)
                        continue
                    sample = real(0)
                    if r1 >= 0:
                        sample += w1 * value[n, r1, m, d]
                    if r2 >= 0:
                        sample += w2 * value[n, r2, m, d]
                    if r3 >= 0:
                        sample += w3 * value[n, r3, m, d]
                    if r4 >= 0:
                        sample += w4 * value[n, r4, m, d]
                    acc += attention_weights[n, q, m, lvl, p] * sample
            output[n, q, m * D + d] = acc

    @cuda.jit
    def backward_kernel(
        grad_output,
        value,
        spatial_shapes,
        level_start_index,
        sampling_locations,
        attention_weights,
        grad_value,
        grad_sampling_locations,
        grad_attention_weights,
        G,
    ):
        partial = cuda.shared.array((3, _THREADS), real)
        N, _, M, D = value.shape
        Lq, L, P = (
            sampling_locations.shape[1],
            sampling_locations.shape[3],
            sampling_locations.shape[4],
        )
        t = cuda.threadIdx.x
        tid = cuda.grid(1)
        item = tid // G
        lane = tid % G
        # Threads past the last item stay to the end: all threads reach every syncthreads.
        valid = item < N * Lq * M
        m = item % M
        q = item // M % Lq
        n = item // (M * Lq)
        one = real(1)
        S = value.shape[1]
        for lvl in range(L):
            H = spatial_shapes[lvl, 0]
            W = spatial_shapes[lvl, 1]
            start = level_start_index[lvl]
            # uniform across the block, so every thread still reaches every syncthreads
            if not level_in_bounds(H, W, start, S):
                continue
            for p in range(P):
                a = real(0)
                g_attn = real(0)
                g_w = real(0)
                g_h = real(0)
                outside = False
                outside_value = real(0)
                if valid:
                    a = attention_weights[n, q, m, lvl, p]
                    x = sampling_locations[n, q, m, lvl, p, 0]
                    y = sampling_locations[n, q, m, lvl, p, 1]
                    r1, r2, r3, r4, w1, w2, w3, w4, lh, lw, outside = bilinear(x, y, H, W, start)
                    outside_value = outside_sample(x, y)
                    d1 = real(0)
                    d2 = real(0)
                    d3 = real(0)
                    d4 = real(0)
                    for d in range(lane, D, G):
                        g = grad_output[n, q, m * D + d]
                        ag = a * g
                        if r1 >= 0:
                            d1 += g * value[n, r1, m, d]
                            cuda.atomic.add(grad_value, (n, r1, m, d), w1 * ag)
                        if r2 >= 0:
                            d2 += g * value[n, r2, m, d]
                            cuda.atomic.add(grad_value, (n, r2, m, d), w2 * ag)
                        if r3 >= 0:
                            d3 += g * value[n, r3, m, d]
                            cuda.atomic.add(grad_value, (n, r3, m, d), w3 * ag)
                        if r4 >= 0:
                            d4 += g * value[n, r4, m, d]
                            cuda.atomic.add(grad_value, (n, r4, m, d), w4 * ag)
                    g_attn = w1 * d1 + w2 * d2 + w3 * d3 + w4 * d4
                    g_w = (one - lh) * (d2 - d1) + lh * (d4 - d3)
                    g_h = (one - lw) * (d3 - d1) + lw * (d4 - d2)
                # Tree sum over the group into its lane 0, in the order of a
                # shfl_xor butterfly with offsets G/2, G/4, ..., 1.
                cuda.syncthreads()  # the reads of the previous sample are done
                partial[0, t] = g_attn
                partial[1, t] = g_w
                partial[2, t] = g_h
                offset = G // 2
                while offset > 0:
                    cuda.syncthreads()
                    if lane < offset:
                        partial[0, t] += partial[0, t + offset]
                        partial[1, t] += partial[1, t + offset]
                        partial[2, t] += partial[2, t + offset]
                    offset //= 2
                if (
                    valid and lane == 0 and outside
                ):  # zero, or NaN for a location or weight that is not finite
                    grad_attention_weights[n, q, m, lvl, p] = outside_value
                    grad_sampling_locations[n, q, m, lvl, p, 0] = a * outside_value
                    grad_sampling_locations[n, q, m, lvl, p, 1] = a * outside_value
                elif valid and lane == 0:
                    grad_attention_weights[n, q, m, lvl, p] = partial[0, t]
                    grad_sampling_locations[n, q, m, lvl, p, 0] = a * partial[1, t] * real(W)
                    grad_sampling_locations[n, q, m, lvl, p, 1] = a * partial[2, t] * real(H)

    return forward_kernel, backward_kernel


def _group_size(D: int) -> int:
    G = 1
    while G < D and G < 32:
        G *= 2
    return G


def _launch(kernel, work: int, G: int, tensors) -> None:
    """Runs `kernel` with one thread per (item, lane) for `work` items on the tensors' device."""
    lanes = work * G
    threads = min(_THREADS, (lanes + 31) // 32 * 32)
    blocks = (lanes + threads - 1) // threads
    tensors = [t.detach() for t in tensors]
    if _simulated():
        # numpy() shares memory with the tensor, so the kernel's writes land in it.
        kernel[blocks, threads](*[t.numpy() for t in tensors], G)
        return
    device = tensors[0].device
    with cuda.gpus[device.index]:
        stream = cuda.external_stream(torch.cuda.current_stream(device).cuda_stream)
        # sync=False: the kernel runs on the tensors' stream, so no host synchronization is needed.
        kernel[blocks, threads, stream](*[cuda.as_cuda_array(t, sync=False) for t in tensors], G)


def forward(
    value, spatial_shapes, level_start_index, sampling_locations, attention_weights
) -> torch.Tensor:
    """Multi-scale deformable attention.

    Args:
        value: (N, S, M, D) float32 or float64.
        spatial_shapes: (L, 2) int64 (H, W) of every level.
        level_start_index: (L,) int64 first row of every level in S.
        sampling_locations: (N, Lq, M, L, P, 2) normalized (x, y).
        attention_weights: (N, Lq, M, L, P).

    Returns:
        (N, Lq, M * D).
    """
    N, _, M, D = value.shape
    Lq = sampling_locations.shape[1]
    work = N * Lq * M
    if work == 0 or D == 0:
        return value.new_zeros(N, Lq, M * D)
    output = value.new_empty(N, Lq, M * D)
    G = _group_size(D)
    forward_kernel, _ = _kernels(str(value.dtype).removeprefix("torch."))
    _launch(
        forward_kernel,
        work,
        G,
        (value, spatial_shapes, level_start_index, sampling_locations, attention_weights, output),
    )
    return output


def backward(
    grad_output, value, spatial_shapes, level_start_index, sampling_locations, attention_weights
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Gradients of `forward` for grad_output (N, Lq, M * D); the other
    arguments are those of `forward`.

    Returns:
        grad_value (N, S, M, D), grad_sampling_locations (N, Lq, M, L, P, 2) and
        grad_attention_weights (N, Lq, M, L, P).
    """
    N, _, M, D = value.shape
    Lq = sampling_locations.shape[1]
    work = N * Lq * M
    grad_value = torch.zeros_like(value)
    if work == 0 or D == 0:
        return grad_value, torch.zeros_like(sampling_locations), torch.zeros_like(attention_weights)
    grad_sampling_locations = torch.empty_like(sampling_locations)
    grad_attention_weights = torch.empty_like(attention_weights)
    G = _group_size(D)
    _, backward_kernel = _kernels(str(value.dtype).removeprefix("torch."))
    _launch(
        backward_kernel,
        work,
        G,
        (
            grad_output,
            value,
            spatial_shapes,
            level_start_index,
            sampling_locations,
            attention_weights,
            grad_value,
            grad_sampling_locations,
            grad_attention_weights,
        ),
    )
    return grad_value, grad_sampling_locations, grad_attention_weights
