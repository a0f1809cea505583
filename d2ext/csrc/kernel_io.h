// Inputs and outputs of the CPU and CUDA kernels' wrappers: internal checks
// (the Python entry point d2ext/ops.py validates user input with descriptive
// errors; these only guard direct calls of torch.ops.d2ext_C.*) and the
// allocation of outputs and gradients.
#pragma once

#include <ATen/ATen.h>
#include <ATen/OpMathType.h>

#include <tuple>

namespace d2ext {

inline void check_kernel_inputs(
    const at::Tensor& value,
    const at::Tensor& spatial_shapes,
    const at::Tensor& level_start_index,
    const at::Tensor& sampling_locations,
    const at::Tensor& attention_weights) {
  TORCH_CHECK(value.dim() == 4, "value must be (N, S, M, D), got ", value.sizes());
  TORCH_CHECK(
      spatial_shapes.dim() == 2 && spatial_shapes.size(1) == 2, "spatial_shapes must be (L, 2), got ",
      spatial_shapes.sizes());
  const int64_t L = spatial_shapes.size(0);
  TORCH_CHECK(
      level_start_index.dim() == 1 && level_start_index.size(0) == L, "level_start_index must be (L,) = (", L,
      "), got ", level_start_index.sizes());
  TORCH_CHECK(
      sampling_locations.dim() == 6 && sampling_locations.size(0) == value.size(0) &&
          sampling_locations.size(2) == value.size(2) && sampling_locations.size(3) == L &&
          sampling_locations.size(5) == 2,
      "sampling_locations must be (N, Lq, M, L, P, 2) with N = ", value.size(0), ", M = ", value.size(2),
      ", L = ", L, ", got ", sampling_locations.sizes());
  TORCH_CHECK(
      attention_weights.sizes() == sampling_locations.sizes().slice(0, 5),
      "attention_weights must be (N, Lq, M, L, P) = ", sampling_locations.sizes().slice(0, 5), ", got ",
      attention_weights.sizes());
  TORCH_CHECK(
      spatial_shapes.scalar_type() == at::kLong && level_start_index.scalar_type() == at::kLong,
      "spatial_shapes and level_start_index must be int64");
  const auto opmath = at::toOpMathType(value.scalar_type());
  TORCH_CHECK(
      sampling_locations.scalar_type() == opmath && attention_weights.scalar_type() == opmath,
      "sampling_locations and attention_weights must be ", opmath, " for value of ",
      value.scalar_type());
  for (const at::Tensor* t :
       {&value, &spatial_shapes, &level_start_index, &sampling_locations, &attention_weights}) {
    TORCH_CHECK(t->is_contiguous(), "d2ext_C kernels take contiguous tensors");
    TORCH_CHECK(t->device() == value.device(), "d2ext_C kernels take tensors on one device");
  }
}

// reference_points and offset_scale (N, Lq, L, 2), of sampling_offsets' dtype and device, contiguous.
inline void check_offset_frame(
    const at::Tensor& reference_points, const at::Tensor& offset_scale, const at::Tensor& sampling_offsets) {
  const auto expected = {
      sampling_offsets.size(0), sampling_offsets.size(1), sampling_offsets.size(3), int64_t(2)};
  for (const at::Tensor* t : {&reference_points, &offset_scale}) {
    TORCH_CHECK(
        t->sizes() == at::IntArrayRef(expected), "reference_points and offset_scale must be (N, Lq, L, 2) = ",
        at::IntArrayRef(expected), ", got ", t->sizes());
    TORCH_CHECK(
        t->scalar_type() == sampling_offsets.scalar_type() && t->device() == sampling_offsets.device() &&
            t->is_contiguous(),
        "reference_points and offset_scale must be contiguous, of sampling_offsets' dtype and device");
  }
}

inline void check_grad_output(
    const at::Tensor& grad_output, const at::Tensor& value, const at::Tensor& sampling_locations) {
  TORCH_CHECK(
      grad_output.dim() == 3 && grad_output.size(0) == value.size(0) &&
          grad_output.size(1) == sampling_locations.size(1) && grad_output.size(2) == value.size(2) * value.size(3),
      "grad_output must be (N, Lq, M * D) = (", value.size(0), ", ", sampling_locations.size(1), ", ",
      value.size(2) * value.size(3), "), got ", grad_output.sizes());
  TORCH_CHECK(grad_output.device() == value.device(), "grad_output must be on value's device");
  TORCH_CHECK(
      grad_output.is_contiguous() && grad_output.scalar_type() == value.scalar_type(),
      "grad_output must be contiguous and of value's dtype");
}

// (N, Lq, M * D), uninitialized.
inline at::Tensor empty_output(const at::Tensor& value, const at::Tensor& sampling_locations) {
  return at::empty({value.size(0), sampling_locations.size(1), value.size(2) * value.size(3)}, value.options());
}

// Zero-initialized gradients; grad_value accumulates in the op-math type
// (float for half types) and is cast to value's dtype by `finish`.
struct Gradients {
  at::Tensor value, sampling_locations, attention_weights;

  static Gradients zeros(
      const at::Tensor& value, const at::Tensor& sampling_locations, const at::Tensor& attention_weights) {
    return {
        at::zeros(value.sizes(), sampling_locations.options()),
        at::zeros_like(sampling_locations),
        at::zeros_like(attention_weights)};
  }

  std::tuple<at::Tensor, at::Tensor, at::Tensor> finish(at::ScalarType value_dtype) const {
    return {value.to(value_dtype), sampling_locations, attention_weights};
  }
};

} // namespace d2ext
