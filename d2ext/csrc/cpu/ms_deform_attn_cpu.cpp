// The CPU implementations of the d2ext_C operators: input checks, allocation,
// and the kernels of the best instruction set the CPU has.
#include "ms_deform_attn_cpu.h"

#include <torch/library.h>

#include <algorithm>
#include <cstdlib>
#include <vector>

#include "../kernel_io.h"

namespace d2ext {
namespace cpu {
namespace {

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

// __builtin_cpu_supports reports AVX and AVX-512 features only where the OS
// also saves their registers (XGETBV), so a feature listed here can be used.
bool cpu_has_avx512() {
#if D2EXT_CPU_AVX512
  return __builtin_cpu_supports("avx512f") && __builtin_cpu_supports("avx512bw") &&
      __builtin_cpu_supports("avx512dq") && __builtin_cpu_supports("avx512vl") && __builtin_cpu_supports("avx2") &&
      __builtin_cpu_supports("fma");
#else
  return false;
#endif
}

bool cpu_has_avx2() {
#if D2EXT_CPU_AVX2
  return __builtin_cpu_supports("avx2") && __builtin_cpu_supports("fma");
#else
  return false;
#endif
}

bool cpu_has_nothing_more() {
  return true;
}

struct KernelSet {
  const char* name; // as D2EXT_CPU_CAPABILITY and ATEN_CPU_CAPABILITY spell it
  const char* needs; // the instruction sets it needs, for messages
  bool (*cpu_has)();
  Kernels (*kernels)();
};

// Best first; the last one runs everywhere.
const std::vector<KernelSet>& kernel_sets() {
  static const std::vector<KernelSet> sets = {
#if D2EXT_CPU_AVX512
      {"avx512", "AVX-512F/BW/DQ/VL", &cpu_has_avx512, &avx512::kernels},
#endif
#if D2EXT_CPU_AVX2
      {"avx2", "AVX2 and FMA", &cpu_has_avx2, &avx2::kernels},
#endif
      {"default", "nothing beyond the build's baseline", &cpu_has_nothing_more, &generic::kernels},
  };
  return sets;
}

// The best set the CPU runs, capped by D2EXT_CPU_CAPABILITY when it is set.
const KernelSet& choose_kernel_set() {
  const auto& sets = kernel_sets();
  const auto best = std::find_if(sets.begin(), sets.end(), [](const KernelSet& k) { return k.cpu_has(); });
  const char* requested = std::getenv("D2EXT_CPU_CAPABILITY");
  if (requested == nullptr || *requested == '\0') {
    return *best;
  }
  const std::string name(requested);
  const auto chosen = std::find_if(sets.begin(), sets.end(), [&](const KernelSet& k) { return name == k.name; });
  if (chosen == sets.end()) {
    std::string names;
    for (const auto& k : sets) {
      names += (names.empty() ? "\"" : ", \"") + std::string(k.name) + "\"";
    }
    TORCH_CHECK(false, "D2EXT_CPU_CAPABILITY must be one of ", names, ", got \"", name, "\"");
  }
  if (chosen < best) {
    TORCH_WARN(
        "D2EXT_CPU_CAPABILITY=", name, ", but this CPU (or build) lacks ", chosen->needs, ": using the ", best->name,
        " kernels");
    return *best;
  }
  return *chosen;
}

const KernelSet& selected_set() {
  static const KernelSet& chosen = choose_kernel_set();
  return chosen;
}

const Kernels& selected_kernels() {
  static const Kernels kernels = selected_set().kernels();
  return kernels;
}

// The levels are on the host here: a level that does not lie within value's
// S rows is an error rather than skipped, as the CUDA kernels must.
void check_levels(const at::Tensor& spatial_shapes, const at::Tensor& level_start_index, int64_t S) {
  const int64_t* shapes = spatial_shapes.const_data_ptr<int64_t>();
  const int64_t* starts = level_start_index.const_data_ptr<int64_t>();
  for (int64_t l = 0; l < spatial_shapes.size(0); ++l) {
    TORCH_CHECK(
        level_in_bounds(shapes[2 * l], shapes[2 * l + 1], starts[l], S),
        "level ", l, " of (H, W) = (", shapes[2 * l], ", ", shapes[2 * l + 1], ") starting at row ", starts[l],
        " does not lie within value's S = ", S, " rows");
  }
}

at::Tensor ms_deform_attn_forward_cpu(
    const at::Tensor& value,
    const at::Tensor& spatial_shapes,
    const at::Tensor& level_start_index,
    const at::Tensor& sampling_locations,
    const at::Tensor& attention_weights) {
  check_kernel_inputs(value, spatial_shapes, level_start_index, sampling_locations, attention_weights);
  check_levels(spatial_shapes, level_start_index, value.size(1));
  auto output = empty_output(value, sampling_locations);
  if (output.numel() > 0) {
    selected_kernels().forward(
        sizes_of(value, sampling_locations), value, spatial_shapes, level_start_index, sampling_locations,
        attention_weights, nullptr, nullptr, output);
  }
  return output;
}

// The forward with the sampling locations computed per query inside the kernel:
// reference_points[n, q, l] + sampling_offsets[n, q, m, l, p] * offset_scale[n, q, l].
at::Tensor ms_deform_attn_forward_at_offsets_cpu(
    const at::Tensor& value,
    const at::Tensor& spatial_shapes,
    const at::Tensor& level_start_index,
    const at::Tensor& reference_points,
    const at::Tensor& offset_scale,
    const at::Tensor& sampling_offsets,
    const at::Tensor& attention_weights) {
  check_kernel_inputs(value, spatial_shapes, level_start_index, sampling_offsets, attention_weights);
  check_offset_frame(reference_points, offset_scale, sampling_offsets);
  check_levels(spatial_shapes, level_start_index, value.size(1));
  auto output = empty_output(value, sampling_offsets);
  if (output.numel() > 0) {
    selected_kernels().forward(
        sizes_of(value, sampling_offsets), value, spatial_shapes, level_start_index, sampling_offsets,
        attention_weights, &reference_points, &offset_scale, output);
  }
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
  check_grad_output(grad_output, value, sampling_locations);
  check_levels(spatial_shapes, level_start_index, value.size(1));
  const auto grads = Gradients::zeros(value, sampling_locations, attention_weights);
  if (grad_output.numel() > 0) {
    selected_kernels().backward(
        sizes_of(value, sampling_locations), grad_output, value, spatial_shapes, level_start_index,
        sampling_locations, attention_weights, grads.value, grads.sampling_locations, grads.attention_weights);
  }
  return grads.finish(value.scalar_type());
}

} // namespace

std::string capability() {
  return selected_set().name;
}

TORCH_LIBRARY_IMPL(d2ext_C, CPU, m) {
  m.impl("ms_deform_attn_forward", &ms_deform_attn_forward_cpu);
  m.impl("ms_deform_attn_forward_at_offsets", &ms_deform_attn_forward_at_offsets_cpu);
  m.impl("ms_deform_attn_backward", &ms_deform_attn_backward_cpu);
}

} // namespace cpu
} // namespace d2ext
