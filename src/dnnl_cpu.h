// What oneDNN can run on this CPU: the instruction set it dispatches to at run time (within
// DNNL_MAX_CPU_ISA), for the engines that choose a precision by it.
#pragma once

#include <string>

namespace patchcore {

/// Whether oneDNN runs bf16 kernels here (AVX-512 BF16 or AMX).
bool dnnl_has_bf16();
/// Whether oneDNN runs AMX tile kernels here (bf16 matrix products at several times AVX-512's
/// rate).
bool dnnl_has_amx();
/// oneDNN's instruction set on this CPU, e.g. "avx512_core_bf16" or "avx2".
std::string dnnl_isa_name();

}  // namespace patchcore
