// The CPU kernels compiled for AVX2 + FMA (8 floats a vector, fused
// multiply-add); ms_deform_attn_cpu.cpp calls them only where the CPU has both.
#include "ms_deform_attn_cpu.h"

#if D2EXT_CPU_AVX2
#if defined(__clang__)
#pragma clang attribute push(__attribute__((target("avx2,fma"))), apply_to = function)
#else
#pragma GCC push_options
#pragma GCC target("avx2,fma")
#endif

#define D2EXT_CPU_ISA avx2
#include "ms_deform_attn_cpu_kernels.h"

#if defined(__clang__)
#pragma clang attribute pop
#else
#pragma GCC pop_options
#endif
#endif
