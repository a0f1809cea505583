// CUDA kernels of multi-scale deformable attention.
//
// One work item is a (batch, query, head) triple. A group of G lanes of a warp
// handles an item, G = min(32, next power of two >= D); lane k of the group
// owns channels k, k + G, ... so value reads are coalesced along channels.
// Half types are read as they are and accumulated in float.
#include <ATen/ATen.h>
#include <ATen/Dispatch.h>
#include <ATen/OpMathType.h>
#include <ATen/cuda/Atomic.cuh>
#include <ATen/cuda/CUDAContext.h>
#include <c10/cuda/CUDAGuard.h>
#include <torch/library.h>

#include <limits>

#include "../bilinear.h"
#include "../kernel_io.h"

namespace d2ext {
namespace {

constexpr int kThreadsPerBlock = 256;

template <typename index_t>
struct Sizes {
  index_t num_items; // N * Lq * M
  index_t Lq, S;
  int M, D, L, P, group;
};

template <typename index_t>
__device__ __forceinline__ index_t value_base(const Sizes<index_t>& s, index_t item) {
  // value[n, :, m, :] for the item's batch n and head m.
  const index_t m = item % s.M;
  const index_t n = item / (static_cast<index_t>(s.M) * s.Lq);
  return n * s.S * s.M * s.D + m * s.D;
}

template <typename scalar_t, typename acc_t, typename index_t>
__global__ void __launch_bounds__(kThreadsPerBlock) forward_kernel(
    const Sizes<index_t> s,
    const scalar_t* __restrict__ value,
    const int64_t* __restrict__ spatial_shapes,
    const int64_t* __restrict__ level_start_index,
    const acc_t* __restrict__ sampling_locations,
    const acc_t* __restrict__ attention_weights,
    scalar_t* __restrict__ output) {
  const index_t item = (static_cast<index_t>(blockIdx.x) * blockDim.x + threadIdx.x) / s.group;
  if (item >= s.num_items) {
    return;
  }
  const int lane = threadIdx.x % s.group;
  const index_t base = value_base(s, item);
  for (int d = lane; d < s.D; d += s.group) {
    acc_t acc = 0;
    index_t sample = item * s.L * s.P;
    for (int l = 0; l < s.L; ++l) {
      const int64_t H = spatial_shapes[2 * l], W = spatial_shapes[2 * l + 1], start = level_start_index[l];
      if (!level_in_bounds(H, W, start, s.S)) {
        sample += s.P;
        continue;
      }
      const index_t level_base = base + static_cast<index_t>(start) * s.M * s.D + d;
      for (int p = 0; p < s.P; ++p, ++sample) {
        const acc_t x = sampling_locations[2 * sample], y = sampling_locations[2 * sample + 1];
        BilinearCorners<acc_t> corners;
        if (!bilinear_corners(x, y, H, W, corners)) {
          acc += attention_weights[sample] * outside_sample(x, y); // 0, or NaN
          continue;
        }
        acc_t sampled = 0;
#pragma unroll
        for (int c = 0; c < 4; ++c) {
          if (corners.pixel[c] >= 0) {
            sampled += corners.weight[c] *
                static_cast<acc_t>(value[level_base + static_cast<index_t>(corners.pixel[c]) * s.M * s.D]);
          }
        }
        acc += attention_weights[sample] * sampled;
      }
    }
    output[item * s.D + d] = static_cast<scalar_t>(acc);
  }
}

template <typename acc_t>
__device__ __forceinline__ acc_t group_sum(acc_t v, unsigned mask, int group) {
  for (int offset = group / 2; offset > 0; offset /= 2) {
    v += __shfl_xor_sync(mask, v, offset);
  }
  return v;
}

template <typename scalar_t, typename acc_t, typename index_t>
__global__ void __launch_bounds__(kThreadsPerBlock) backward_kernel(
    const Sizes<index_t> s,
    const scalar_t* __restrict__ grad_output,
    const scalar_t* __restrict__ value,
    const int64_t* __restrict__ spatial_shapes,
    const int64_t* __restrict__ level_start_index,
    const acc_t* __restrict__ sampling_locations,
    const acc_t* __restrict__ attention_weights,
    acc_t* __restrict__ grad_value,
    acc_t* __restrict__ grad_sampling_locations,
    acc_t* __restrict__ grad_attention_weights) {
  const index_t item = (static_cast<index_t>(blockIdx.x) * blockDim.x + threadIdx.x) / s.group;
  // Groups are aligned and never straddle an item, so a whole group returns
  // together and the shuffles below only name lanes of their own group.
  if (item >= s.num_items) {
    return;
  }
  const int lane = threadIdx.x % s.group;
  const int lane_in_warp = threadIdx.x % 32;
  const unsigned mask = s.group == 32
      ? 0xffffffffu
      : ((1u << s.group) - 1u) << (lane_in_warp - lane);
  const index_t base = value_base(s, item);
  const scalar_t* grad = grad_output + item * s.D;
  index_t sample = item * s.L * s.P;
  for (int l = 0; l < s.L; ++l) {
    const int64_t H = spatial_shapes[2 * l], W = spatial_shapes[2 * l + 1], start = level_start_index[l];
    if (!level_in_bounds(H, W, start, s.S)) {
      sample += s.P;
      continue; // the gradients were zero-initialized
    }
    const index_t level_base = base + static_cast<index_t>(start) * s.M * s.D;
    for (int p = 0; p < s.P; ++p, ++sample) {
      const acc_t x = sampling_locations[2 * sample], y = sampling_locations[2 * sample + 1];
      const acc_t weight = attention_weights[sample];
      BilinearCorners<acc_t> corners;
      if (!bilinear_corners(x, y, H, W, corners)) {
        if (lane == 0) { // zero, or NaN for a location or weight that is not finite
          const acc_t outside = outside_sample(x, y);
          grad_attention_weights[sample] = outside;
          grad_sampling_locations[2 * sample] = weight * outside;
          grad_sampling_locations[2 * sample + 1] = weight * outside;
        }
        continue;
      }
      acc_t dot[4] = {0, 0, 0, 0};
      for (int d = lane; d < s.D; d += s.group) {
        const acc_t g = static_cast<acc_t>(grad[d]);
#pragma unroll
        for (int c = 0; c < 4; ++c) {
          if (corners.pixel[c] >= 0) {
            const index_t offset = level_base + static_cast<index_t>(corners.pixel[c]) * s.M * s.D + d;
            dot[c] += g * static_cast<acc_t>(value[offset]);
            gpuAtomicAdd(grad_value + offset, weight * corners.weight[c] * g);
          }
        }
      }
      // bilinear_grad is linear in the dots: apply it to the partial sums, reduce after.
      const BilinearGrad<acc_t> bg = bilinear_grad(corners, dot, H, W);
      const acc_t sampled = group_sum(bg.sampled, mask, s.group);
      const acc_t grad_x = group_sum(bg.grad_x, mask, s.group);
      const acc_t grad_y = group_sum(bg.grad_y, mask, s.group);
      if (lane == 0) {
        grad_attention_weights[sample] = sampled;
        grad_sampling_locations[2 * sample] = weight * grad_x;
        grad_sampling_locations[2 * sample + 1] = weight * grad_y;
      }
    }
  }
}

template <typename index_t>
Sizes<index_t> sizes_of(const at::Tensor& value, const at::Tensor& sampling_locations) {
  const int64_t D = value.size(3);
  int group = 1;
  while (group < D && group < 32) {
    group *= 2;
  }
  return {
      static_cast<index_t>(value.size(0) * sampling_locations.size(1) * value.size(2)),
      static_cast<index_t>(sampling_locations.size(1)),
      static_cast<index_t>(value.size(1)),
      static_cast<int>(value.size(2)),
      static_cast<int>(D),
      static_cast<int>(sampling_locations.size(3)),
      static_cast<int>(sampling_locations.size(4)),
      group};
}

// 32-bit index arithmetic is markedly faster; use it whenever no offset or
// thread index can overflow it.
bool fits_int32(const at::Tensor& value, const at::Tensor& sampling_locations, int64_t num_threads) {
  const int64_t limit = std::numeric_limits<int32_t>::max();
  const int64_t output_numel = value.size(0) * sampling_locations.size(1) * value.size(2) * value.size(3);
  return value.numel() < limit && sampling_locations.numel() < limit && output_numel < limit &&
      num_threads < limit;
}

int64_t num_blocks(const at::Tensor& value, const at::Tensor& sampling_locations) {
  const auto s = sizes_of<int64_t>(value, sampling_locations);
  const int64_t items_per_block = kThreadsPerBlock / s.group;
  return (s.num_items + items_per_block - 1) / items_per_block;
}

// Calls f(index_t{}) with int32_t or int64_t.
template <typename F>
void dispatch_index_type(const at::Tensor& value, const at::Tensor& sampling_locations, int64_t blocks, F&& f) {
  if (fits_int32(value, sampling_locations, blocks * kThreadsPerBlock)) {
    f(int32_t{});
  } else {
    f(int64_t{});
  }
}

at::Tensor ms_deform_attn_forward_cuda(
    const at::Tensor& value,
    const at::Tensor& spatial_shapes,
    const at::Tensor& level_start_index,
    const at::Tensor& sampling_locations,
    const at::Tensor& attention_weights) {
  check_kernel_inputs(value, spatial_shapes, level_start_index, sampling_locations, attention_weights);
  const c10::cuda::CUDAGuard device_guard(value.device());
  auto output = empty_output(value, sampling_locations);
  if (output.numel() == 0) {
    return output;
  }
  const int64_t blocks = num_blocks(value, sampling_locations);
  const auto stream = at::cuda::getCurrentCUDAStream();
  AT_DISPATCH_FLOATING_TYPES_AND2(
      at::kHalf, at::kBFloat16, value.scalar_type(), "ms_deform_attn_forward_cuda", [&] {
        using acc_t = at::opmath_type<scalar_t>;
        dispatch_index_type(value, sampling_locations, blocks, [&](auto index_tag) {
          using index_t = decltype(index_tag);
          forward_kernel<scalar_t, acc_t, index_t><<<blocks, kThreadsPerBlock, 0, stream>>>(
              sizes_of<index_t>(value, sampling_locations),
              value.const_data_ptr<scalar_t>(),
              spatial_shapes.const_data_ptr<int64_t>(),
              level_start_index.const_data_ptr<int64_t>(),
              sampling_locations.const_data_ptr<acc_t>(),
              attention_weights.const_data_ptr<acc_t>(),
              output.mutable_data_ptr<scalar_t>());
          C10_CUDA_KERNEL_LAUNCH_CHECK();
        });
      });
  return output;
}

std::tuple<at::Tensor, at::Tensor, at::Tensor> ms_deform_attn_backward_cuda(
    const at::Tensor& grad_output,
    const at::Tensor& value,
    const at::Tensor& spatial_shapes,
    const at::Tensor& level_start_index,
    const at::Tensor& sampling_locations,
    const at::Tensor& attention_weights) {
  check_kernel_inputs(value, spatial_shapes, level_start_index, sampling_locations, attention_weights);
  check_grad_output(grad_output, value, sampling_locations);
  at::globalContext().alertNotDeterministic(
      "d2ext::ms_deform_attn backward on CUDA (ms_deform_attn_backward_cuda accumulates grad_value with atomicAdd)");
  const c10::cuda::CUDAGuard device_guard(value.device());
  const auto grads = Gradients::zeros(value, sampling_locations, attention_weights);
  if (grad_output.numel() > 0) {
    const int64_t blocks = num_blocks(value, sampling_locations);
    const auto stream = at::cuda::getCurrentCUDAStream();
    AT_DISPATCH_FLOATING_TYPES_AND2(
        at::kHalf, at::kBFloat16, value.scalar_type(), "ms_deform_attn_backward_cuda", [&] {
          using acc_t = at::opmath_type<scalar_t>;
          dispatch_index_type(value, sampling_locations, blocks, [&](auto index_tag) {
            using index_t = decltype(index_tag);
            backward_kernel<scalar_t, acc_t, index_t><<<blocks, kThreadsPerBlock, 0, stream>>>(
                sizes_of<index_t>(value, sampling_locations),
                grad_output.const_data_ptr<scalar_t>(),
                value.const_data_ptr<scalar_t>(),
                spatial_shapes.const_data_ptr<int64_t>(),
                level_start_index.const_data_ptr<int64_t>(),
                sampling_locations.const_data_ptr<acc_t>(),
                attention_weights.const_data_ptr<acc_t>(),
                grads.value.mutable_data_ptr<acc_t>(),
                grads.sampling_locations.mutable_data_ptr<acc_t>(),
                grads.attention_weights.mutable_data_ptr<acc_t>());
            C10_CUDA_KERNEL_LAUNCH_CHECK();
          });
        });
  }
  return grads.finish(value.scalar_type());
}

} // namespace

TORCH_LIBRARY_IMPL(d2ext_C, CUDA, m) {
  m.impl("ms_deform_attn_forward", &ms_deform_attn_forward_cuda);
  m.impl("ms_deform_attn_backward", &ms_deform_attn_backward_cuda);
}

} // namespace d2ext
