// CPU kernels of multi-scale deformable attention.
//
// Forward parallelizes over (batch, query); backward over (batch, head), so
// that every thread owns a disjoint slice of grad_value and the result is
// deterministic without atomics.
#include <ATen/ATen.h>
#include <ATen/Dispatch.h>
#include <ATen/OpMathType.h>
#include <ATen/Parallel.h>
#include <torch/library.h>

#include <vector>

#include "../bilinear.h"
#include "../ms_deform_attn_checks.h"

namespace d2ext {
namespace {

struct Sizes {
  int64_t N, S, M, D, Lq, L, P;
};

Sizes sizes_of(const at::Tensor& value, const at::Tensor& sampling_locations) {
  return {
      value.size(0),
      value.size(1),
      value.size(2),
      value.size(3),
      sampling_locations.size(1),
      sampling_locations.size(3),
      sampling_locations.size(4)};
}

template <typename scalar_t, typename acc_t>
void forward_kernel(
    const Sizes& s,
    const scalar_t* value,
    const int64_t* spatial_shapes,
    const int64_t* level_start_index,
    const acc_t* sampling_locations,
    const acc_t* attention_weights,
    scalar_t* output) {
  const int64_t grain = std::max<int64_t>(1, at::internal::GRAIN_SIZE / (s.M * s.L * s.P * s.D));
  at::parallel_for(0, s.N * s.Lq, grain, [&](int64_t begin, int64_t end) {
    std::vector<acc_t> acc(s.D);
    for (int64_t nq = begin; nq < end; ++nq) {
      const scalar_t* value_n = value + (nq / s.Lq) * s.S * s.M * s.D;
      for (int64_t m = 0; m < s.M; ++m) {
        std::fill(acc.begin(), acc.end(), acc_t(0));
        int64_t sample = (nq * s.M + m) * s.L * s.P;
        for (int64_t l = 0; l < s.L; ++l) {
          const int64_t H = spatial_shapes[2 * l], W = spatial_shapes[2 * l + 1];
          for (int64_t p = 0; p < s.P; ++p, ++sample) {
            BilinearCorners<acc_t> corners;
            if (!bilinear_corners(
                    sampling_locations[2 * sample], sampling_locations[2 * sample + 1], H, W, corners)) {
              continue;
            }
            for (int c = 0; c < 4; ++c) {
              if (corners.pixel[c] < 0) {
                continue;
              }
              const acc_t coef = attention_weights[sample] * corners.weight[c];
              const scalar_t* v = value_n + ((level_start_index[l] + corners.pixel[c]) * s.M + m) * s.D;
              for (int64_t d = 0; d < s.D; ++d) {
                acc[d] += coef * static_cast<acc_t>(v[d]);
              }
            }
          }
        }
        scalar_t* out = output + (nq * s.M + m) * s.D;
        for (int64_t d = 0; d < s.D; ++d) {
          out[d] = static_cast<scalar_t>(acc[d]);
        }
      }
    }
  });
}

template <typename scalar_t, typename acc_t>
void backward_kernel(
    const Sizes& s,
    const scalar_t* grad_output,
    const scalar_t* value,
    const int64_t* spatial_shapes,
    const int64_t* level_start_index,
    const acc_t* sampling_locations,
    const acc_t* attention_weights,
    acc_t* grad_value,
    acc_t* grad_sampling_locations,
    acc_t* grad_attention_weights) {
  at::parallel_for(0, s.N * s.M, 1, [&](int64_t begin, int64_t end) {
    std::vector<acc_t> grad(s.D);
    for (int64_t nm = begin; nm < end; ++nm) {
      const int64_t n = nm / s.M, m = nm % s.M;
      const int64_t value_offset = n * s.S * s.M * s.D + m * s.D;
      for (int64_t q = 0; q < s.Lq; ++q) {
        const int64_t nq = n * s.Lq + q;
        const scalar_t* g = grad_output + (nq * s.M + m) * s.D;
        for (int64_t d = 0; d < s.D; ++d) {
          grad[d] = static_cast<acc_t>(g[d]);
        }
        int64_t sample = (nq * s.M + m) * s.L * s.P;
        for (int64_t l = 0; l < s.L; ++l) {
          const int64_t H = spatial_shapes[2 * l], W = spatial_shapes[2 * l + 1];
          for (int64_t p = 0; p < s.P; ++p, ++sample) {
            BilinearCorners<acc_t> corners;
            if (!bilinear_corners(
                    sampling_locations[2 * sample], sampling_locations[2 * sample + 1], H, W, corners)) {
              continue; // the gradients were zero-initialized
            }
            const acc_t weight = attention_weights[sample];
            acc_t dot[4] = {0, 0, 0, 0};
            for (int c = 0; c < 4; ++c) {
              if (corners.pixel[c] < 0) {
                continue;
              }
              const int64_t offset = value_offset + (level_start_index[l] + corners.pixel[c]) * s.M * s.D;
              const scalar_t* v = value + offset;
              acc_t* gv = grad_value + offset;
              const acc_t coef = weight * corners.weight[c];
              acc_t sum = 0;
              // Vectorizing a float sum reorders it; allowed here (-fopenmp-simd).
#pragma omp simd reduction(+ : sum)
              for (int64_t d = 0; d < s.D; ++d) {
                sum += grad[d] * static_cast<acc_t>(v[d]);
                gv[d] += coef * grad[d];
              }
              dot[c] = sum;
            }
            const BilinearGrad<acc_t> bg = bilinear_grad(corners, dot, H, W);
            grad_attention_weights[sample] = bg.sampled;
            grad_sampling_locations[2 * sample] = weight * bg.grad_x;
            grad_sampling_locations[2 * sample + 1] = weight * bg.grad_y;
          }
        }
      }
    }
  });
}

at::Tensor ms_deform_attn_forward_cpu(
    const at::Tensor& value,
    const at::Tensor& spatial_shapes,
    const at::Tensor& level_start_index,
    const at::Tensor& sampling_locations,
    const at::Tensor& attention_weights) {
  check_kernel_inputs(value, spatial_shapes, level_start_index, sampling_locations, attention_weights);
  const Sizes s = sizes_of(value, sampling_locations);
  auto output = at::empty({s.N, s.Lq, s.M * s.D}, value.options());
  if (output.numel() == 0) {
    return output;
  }
  AT_DISPATCH_FLOATING_TYPES_AND2(
      at::kHalf, at::kBFloat16, value.scalar_type(), "ms_deform_attn_forward_cpu", [&] {
        using acc_t = at::opmath_type<scalar_t>;
        forward_kernel<scalar_t, acc_t>(
            s,
            value.const_data_ptr<scalar_t>(),
            spatial_shapes.const_data_ptr<int64_t>(),
            level_start_index.const_data_ptr<int64_t>(),
            sampling_locations.const_data_ptr<acc_t>(),
            attention_weights.const_data_ptr<acc_t>(),
            output.mutable_data_ptr<scalar_t>());
      });
  return output;
}

std::tuple<at::Tensor, at::Tensor, at::Tensor> ms_deform_attn_backward_cpu(
    const at::Tensor& grad_output,
    const at::Tensor& value,
    const at::Tensor& spatial_shapes,
    const at::Tensor& level_start_index,
    const at::Tensor& sampling_locations,
    const at::Tensor& attention_weights) {
  check_kernel_inputs(value, spatial_shapes, level_start_index, sampling_locations, attention_weights);
  TORCH_CHECK(
      grad_output.is_contiguous() && grad_output.scalar_type() == value.scalar_type(),
      "grad_output must be contiguous and of value's dtype");
  const Sizes s = sizes_of(value, sampling_locations);
  // Accumulated in the op-math type (float for half types), cast at the end.
  auto grad_value = at::zeros(value.sizes(), sampling_locations.options());
  auto grad_sampling_locations = at::zeros_like(sampling_locations);
  auto grad_attention_weights = at::zeros_like(attention_weights);
  if (grad_output.numel() > 0) {
    AT_DISPATCH_FLOATING_TYPES_AND2(
        at::kHalf, at::kBFloat16, value.scalar_type(), "ms_deform_attn_backward_cpu", [&] {
          using acc_t = at::opmath_type<scalar_t>;
          backward_kernel<scalar_t, acc_t>(
              s,
              grad_output.const_data_ptr<scalar_t>(),
              value.const_data_ptr<scalar_t>(),
              spatial_shapes.const_data_ptr<int64_t>(),
              level_start_index.const_data_ptr<int64_t>(),
              sampling_locations.const_data_ptr<acc_t>(),
              attention_weights.const_data_ptr<acc_t>(),
              grad_value.mutable_data_ptr<acc_t>(),
              grad_sampling_locations.mutable_data_ptr<acc_t>(),
              grad_attention_weights.mutable_data_ptr<acc_t>());
        });
  }
  return {grad_value.to(value.scalar_type()), grad_sampling_locations, grad_attention_weights};
}

} // namespace

TORCH_LIBRARY_IMPL(d2ext_C, CPU, m) {
  m.impl("ms_deform_attn_forward", &ms_deform_attn_forward_cpu);
  m.impl("ms_deform_attn_backward", &ms_deform_attn_backward_cpu);
}

} // namespace d2ext
