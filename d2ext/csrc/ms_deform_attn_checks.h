// Internal invariants of the kernels' inputs. The Python entry point
// (d2ext/ops.py) validates user input with descriptive errors; these checks
// only guard direct calls of torch.ops.d2ext_C.*.
#pragma once

#include <ATen/ATen.h>
#include <ATen/OpMathType.h>

namespace d2ext {

inline void check_kernel_inputs(
    const at::Tensor& value,
    const at::Tensor& spatial_shapes,
    const at::Tensor& level_start_index,
    const at::Tensor& sampling_locations,
    const at::Tensor& attention_weights) {
  TORCH_CHECK(value.dim() == 4, "value must be (N, S, M, D)");
  TORCH_CHECK(sampling_locations.dim() == 6, "sampling_locations must be (N, Lq, M, L, P, 2)");
  TORCH_CHECK(attention_weights.dim() == 5, "attention_weights must be (N, Lq, M, L, P)");
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

} // namespace d2ext
