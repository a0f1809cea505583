// The CPU kernels compiled for the baseline instruction set of the build.
#include "ms_deform_attn_cpu.h"

#define D2EXT_CPU_ISA generic
#include "ms_deform_attn_cpu_kernels.h"
