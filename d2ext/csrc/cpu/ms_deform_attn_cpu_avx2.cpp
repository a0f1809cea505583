// The CPU kernels compiled for AVX2 + FMA (8 floats a vector, fused
// multiply-add); ms_deform_attn_cpu.cpp calls them only where the CPU has both.
#include "ms_deform_attn_cpu.h"

#if D2EXT_CPU_AVX2
#define D2EXT_CPU_ISA avx2
#define D2EXT_CPU_VECTOR_BYTES 32
#define D2EXT_CPU_TARGET "avx2,fma"
#include "ms_deform_attn_cpu_kernels.h"
#endif
