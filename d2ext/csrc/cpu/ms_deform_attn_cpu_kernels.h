// The CPU loops of multi-scale deformable attention, compiled once per
// instruction set: ms_deform_attn_cpu_<isa>.cpp includes ms_deform_attn_cpu.h
// (every header needed here), sets its target, defines D2EXT_CPU_ISA and then
// includes this file, which therefore includes nothing and has no include guard.
//
// Forward parallelizes over (batch, query); backward over (batch, head), so
// that every thread owns a disjoint slice of grad_value and the result is
// deterministic without atomics.
#ifndef D2EXT_CPU_ISA
#error "define D2EXT_CPU_ISA, the namespace of the instruction set, before including this file"
#endif

namespace d2ext {
namespace cpu {
namespace D2EXT_CPU_ISA {
namespace {

// The four corner rows of a sample, each a pointer to D channels. A corner
// outside the map points at a row of zeros with weight 0 (and, in the backward,
// a scratch row for its gradient), so the channel loops below run branch-free
// over all four corners at once.
template <typename scalar_t, typename acc_t>
struct CornerRows {
  const scalar_t* value[4];
  acc_t* grad[4];
  acc_t weight[4];
};

template <typename scalar_t, typename acc_t>
CornerRows<scalar_t, acc_t> corner_rows(
    const BilinearCorners<acc_t>& corners,
    acc_t scale,
    const scalar_t* value_level,
    acc_t* grad_level,
    int64_t row_stride,
    const scalar_t* zeros,
    acc_t* scratch) {
  CornerRows<scalar_t, acc_t> rows;
  for (int c = 0; c < 4; ++c) {
    const bool inside = corners.pixel[c] >= 0;
    rows.value[c] = inside ? value_level + corners.pixel[c] * row_stride : zeros;
    rows.grad[c] = inside && grad_level != nullptr ? grad_level + corners.pixel[c] * row_stride : scratch;
    rows.weight[c] = inside ? scale * corners.weight[c] : acc_t(0);
  }
  return rows;
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
  const int64_t work_per_item = std::max<int64_t>(1, s.M * s.L * s.P * s.D);
  const int64_t grain = std::max<int64_t>(1, at::internal::GRAIN_SIZE / work_per_item);
  const int64_t row_stride = s.M * s.D; // between pixels of one head
  at::parallel_for(0, s.N * s.Lq, grain, [&](int64_t begin, int64_t end) {
    std::vector<acc_t> acc_buffer(s.D);
    std::vector<scalar_t> zeros(s.D, scalar_t(0));
    acc_t* __restrict__ acc = acc_buffer.data();
    for (int64_t nq = begin; nq < end; ++nq) {
      const scalar_t* value_n = value + (nq / s.Lq) * s.S * row_stride;
      for (int64_t m = 0; m < s.M; ++m) {
        std::fill(acc, acc + s.D, acc_t(0));
        int64_t sample = (nq * s.M + m) * s.L * s.P;
        for (int64_t l = 0; l < s.L; ++l) {
          const int64_t H = spatial_shapes[2 * l], W = spatial_shapes[2 * l + 1];
          const scalar_t* value_level = value_n + level_start_index[l] * row_stride + m * s.D;
          for (int64_t p = 0; p < s.P; ++p, ++sample) {
            const acc_t x = sampling_locations[2 * sample], y = sampling_locations[2 * sample + 1];
            BilinearCorners<acc_t> corners;
            if (!bilinear_corners(x, y, H, W, corners)) {
              const acc_t outside = attention_weights[sample] * outside_sample(x, y);
              if (outside != acc_t(0)) { // NaN: a location or weight is not finite
                for (int64_t d = 0; d < s.D; ++d) {
                  acc[d] += outside;
                }
              }
              continue;
            }
            const auto r = corner_rows<scalar_t, acc_t>(
                corners, attention_weights[sample], value_level, nullptr, row_stride, zeros.data(), nullptr);
            for (int64_t d = 0; d < s.D; ++d) {
              acc[d] += r.weight[0] * static_cast<acc_t>(r.value[0][d]) +
                  r.weight[1] * static_cast<acc_t>(r.value[1][d]) +
                  r.weight[2] * static_cast<acc_t>(r.value[2][d]) +
                  r.weight[3] * static_cast<acc_t>(r.value[3][d]);
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
  const int64_t row_stride = s.M * s.D;
  at::parallel_for(0, s.N * s.M, 1, [&](int64_t begin, int64_t end) {
    std::vector<acc_t> grad_buffer(s.D);
    std::vector<scalar_t> zeros(s.D, scalar_t(0));
    std::vector<acc_t> scratch(s.D);
    acc_t* __restrict__ grad = grad_buffer.data();
    // Query by query over the thread's heads of one image: a query's rows of
    // grad_output, locations and weights are then read in memory order. Each
    // head still takes its queries in order, so the result does not depend on
    // how the heads are split among threads.
    for (int64_t n = begin / s.M; n * s.M < end; ++n) {
      const int64_t m_begin = std::max(begin - n * s.M, int64_t(0));
      const int64_t m_end = std::min(end - n * s.M, s.M);
      for (int64_t q = 0; q < s.Lq; ++q) {
        for (int64_t m = m_begin; m < m_end; ++m) {
          const int64_t head_offset = n * s.S * row_stride + m * s.D;
          const int64_t nqm = (n * s.Lq + q) * s.M + m;
          const scalar_t* g = grad_output + nqm * s.D;
          for (int64_t d = 0; d < s.D; ++d) {
            grad[d] = static_cast<acc_t>(g[d]);
          }
          int64_t sample = nqm * s.L * s.P;
          for (int64_t l = 0; l < s.L; ++l) {
            const int64_t H = spatial_shapes[2 * l], W = spatial_shapes[2 * l + 1];
            const int64_t level_offset = head_offset + level_start_index[l] * row_stride;
            for (int64_t p = 0; p < s.P; ++p, ++sample) {
              const acc_t x = sampling_locations[2 * sample], y = sampling_locations[2 * sample + 1];
              const acc_t weight = attention_weights[sample];
              BilinearCorners<acc_t> corners;
              if (!bilinear_corners(x, y, H, W, corners)) {
                // zero, or NaN for a location or weight that is not finite; grad_value stays zero
                const acc_t outside = outside_sample(x, y);
                grad_attention_weights[sample] = outside;
                grad_sampling_locations[2 * sample] = weight * outside;
                grad_sampling_locations[2 * sample + 1] = weight * outside;
                continue;
              }
              const auto r = corner_rows<scalar_t, acc_t>(
                  corners, weight, value + level_offset, grad_value + level_offset, row_stride, zeros.data(),
                  scratch.data());
              acc_t dot0 = 0, dot1 = 0, dot2 = 0, dot3 = 0;
              // Vectorizing the float sums reorders them; allowed here.
#pragma omp simd reduction(+ : dot0, dot1, dot2, dot3)
              for (int64_t d = 0; d < s.D; ++d) {
                const acc_t gd = grad[d];
                dot0 += gd * static_cast<acc_t>(r.value[0][d]);
                dot1 += gd * static_cast<acc_t>(r.value[1][d]);
                dot2 += gd * static_cast<acc_t>(r.value[2][d]);
                dot3 += gd * static_cast<acc_t>(r.value[3][d]);
                r.grad[0][d] += r.weight[0] * gd;
                r.grad[1][d] += r.weight[1] * gd;
                r.grad[2][d] += r.weight[2] * gd;
                r.grad[3][d] += r.weight[3] * gd;
              }
              const acc_t dot[4] = {dot0, dot1, dot2, dot3};
              const BilinearGrad<acc_t> bg = bilinear_grad(corners, dot, H, W);
              grad_attention_weights[sample] = bg.sampled;
              grad_sampling_locations[2 * sample] = weight * bg.grad_x;
              grad_sampling_locations[2 * sample + 1] = weight * bg.grad_y;
            }
          }
        }
      }
    }
  });
}

void forward(
    const Sizes& s,
    const at::Tensor& value,
    const at::Tensor& spatial_shapes,
    const at::Tensor& level_start_index,
    const at::Tensor& sampling_locations,
    const at::Tensor& attention_weights,
    const at::Tensor& output) {
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, value.scalar_type(), "ms_deform_attn_forward_cpu", [&] {
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
}

void backward(
    const Sizes& s,
    const at::Tensor& grad_output,
    const at::Tensor& value,
    const at::Tensor& spatial_shapes,
    const at::Tensor& level_start_index,
    const at::Tensor& sampling_locations,
    const at::Tensor& attention_weights,
    const at::Tensor& grad_value,
    const at::Tensor& grad_sampling_locations,
    const at::Tensor& grad_attention_weights) {
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, value.scalar_type(), "ms_deform_attn_backward_cpu", [&] {
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

} // namespace

Kernels kernels() {
  return {&forward, &backward};
}

} // namespace D2EXT_CPU_ISA
} // namespace cpu
} // namespace d2ext
