// The CPU kernels compiled for AVX-512 F/BW/DQ/VL (16 floats a vector, masked
// loads and stores for the last channels of a row); ms_deform_attn_cpu.cpp calls
// them only where the CPU has these and the OS saves the 512-bit registers.
#include "ms_deform_attn_cpu.h"

#if D2EXT_CPU_AVX512
#define D2EXT_CPU_ISA avx512
#define D2EXT_CPU_VECTOR_BYTES 64
#if defined(__clang__)
#define D2EXT_CPU_TARGET "avx512f,avx512bw,avx512dq,avx512vl,avx2,fma"
#else
// GCC's tuning for some CPUs would otherwise keep vectorized loops at 256 bits.
#define D2EXT_CPU_TARGET "avx512f,avx512bw,avx512dq,avx512vl,avx2,fma,prefer-vector-width=512"
#endif
#include "ms_deform_attn_cpu_kernels.h"
#endif
