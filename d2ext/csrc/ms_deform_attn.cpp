// Registers the d2ext_C operators; the CPU and CUDA kernels register their
// implementations in cpu/ and cuda/.
#include <torch/extension.h>
#include <torch/library.h>

#include "cpu/ms_deform_attn_cpu.h"

TORCH_LIBRARY(d2ext_C, m) {
  m.def(
      "ms_deform_attn_forward(Tensor value, Tensor spatial_shapes, "
      "Tensor level_start_index, Tensor sampling_locations, "
      "Tensor attention_weights) -> Tensor");
  m.def(
      "ms_deform_attn_forward_at_offsets(Tensor value, Tensor spatial_shapes, "
      "Tensor level_start_index, Tensor reference_points, Tensor offset_scale, "
      "Tensor sampling_offsets, Tensor attention_weights) -> Tensor");
  m.def(
      "ms_deform_attn_backward(Tensor grad_output, Tensor value, "
      "Tensor spatial_shapes, Tensor level_start_index, "
      "Tensor sampling_locations, Tensor attention_weights) "
      "-> (Tensor, Tensor, Tensor)");
}

PYBIND11_MODULE(TORCH_EXTENSION_NAME, m) {
  m.def(
      "cuda_compiled",
      []() {
#ifdef D2EXT_WITH_CUDA
        return true;
#else
        return false;
#endif
      },
      "Whether the CUDA kernels were compiled into this extension.");
  m.def(
      "cpu_capability",
      &d2ext::cpu::capability,
      "The instruction set the CPU kernels run with: \"avx2\" (AVX2 and FMA) or \"default\".");
}
