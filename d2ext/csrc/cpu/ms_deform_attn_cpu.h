// Declarations shared by the CPU op (ms_deform_attn_cpu.cpp) and its kernels,
// which are compiled once per instruction set (ms_deform_attn_cpu_kernels.h).
//
// Every header the kernels use is included here, so that a kernel translation
// unit includes them all before it sets its target: an inline function first
// defined under a target pragma would be compiled for that instruction set, and
// the linker could pick that copy for every caller.
#pragma once

#include <ATen/ATen.h>
#include <ATen/Dispatch.h>
#include <ATen/OpMathType.h>
#include <ATen/Parallel.h>

#include <algorithm>
#include <cstdint>
#include <cstring>
#include <limits>
#include <string>
#include <type_traits>
#include <utility>
#include <vector>

#include "../bilinear.h"

// x86-64 compilers that take a target per function get AVX2 + FMA and
// AVX-512 builds of the kernels beside the generic one, chosen at run time.
#if (defined(__x86_64__) || defined(__i386__)) && defined(__GNUC__)
#define D2EXT_CPU_AVX2 1
#define D2EXT_CPU_AVX512 1
#else
#define D2EXT_CPU_AVX2 0
#define D2EXT_CPU_AVX512 0
#endif

namespace d2ext {
namespace cpu {

struct Sizes {
  int64_t N, S, M, D, Lq, L, P;
};

// The kernels of one instruction set, on tensors checked and allocated by the op.
struct Kernels {
  void (*forward)(
      const Sizes& s,
      const at::Tensor& value,
      const at::Tensor& spatial_shapes,
      const at::Tensor& level_start_index,
      const at::Tensor& sampling_locations,
      const at::Tensor& attention_weights,
      const at::Tensor* reference_points, // with offset_scale: sampling_locations holds offsets
      const at::Tensor* offset_scale,
      const at::Tensor& output);
  void (*backward)(
      const Sizes& s,
      const at::Tensor& grad_output,
      const at::Tensor& value,
      const at::Tensor& spatial_shapes,
      const at::Tensor& level_start_index,
      const at::Tensor& sampling_locations,
      const at::Tensor& attention_weights,
      const at::Tensor& grad_value,
      const at::Tensor& grad_sampling_locations,
      const at::Tensor& grad_attention_weights);
};

namespace generic {
Kernels kernels();
}
#if D2EXT_CPU_AVX2
namespace avx2 {
Kernels kernels();
}
#endif
#if D2EXT_CPU_AVX512
namespace avx512 {
Kernels kernels();
}
#endif

// The instruction set the CPU kernels run with: "avx512" where the CPU has
// AVX-512 F/BW/DQ/VL, else "avx2" where it has AVX2 and FMA, else "default".
// D2EXT_CPU_CAPABILITY=avx2 or default caps it (as ATEN_CPU_CAPABILITY does
// torch's).
std::string capability();

} // namespace cpu
} // namespace d2ext
