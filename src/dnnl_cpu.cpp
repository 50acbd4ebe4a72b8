#include "dnnl_cpu.h"

#include <oneapi/dnnl/dnnl.hpp>
#include <utility>

namespace patchcore {
namespace {

bool isa_has(dnnl::cpu_isa isa, dnnl::cpu_isa feature) {
  return (static_cast<unsigned>(isa) & static_cast<unsigned>(feature)) ==
         static_cast<unsigned>(feature);
}

}  // namespace

bool dnnl_has_bf16() {
  return isa_has(dnnl::get_effective_cpu_isa(), dnnl::cpu_isa::avx512_core_bf16);
}

bool dnnl_has_amx() {
  return isa_has(dnnl::get_effective_cpu_isa(), dnnl::cpu_isa::avx512_core_amx);
}

std::string dnnl_isa_name() {
  const dnnl::cpu_isa isa = dnnl::get_effective_cpu_isa();
  for (auto [feature, name] : {std::pair{dnnl::cpu_isa::avx512_core_amx, "avx512_core_amx"},
                               {dnnl::cpu_isa::avx512_core_bf16, "avx512_core_bf16"},
                               {dnnl::cpu_isa::avx512_core_vnni, "avx512_core_vnni"},
                               {dnnl::cpu_isa::avx512_core, "avx512_core"},
                               {dnnl::cpu_isa::avx2_vnni, "avx2_vnni"},
                               {dnnl::cpu_isa::avx2, "avx2"},
                               {dnnl::cpu_isa::avx, "avx"},
                               {dnnl::cpu_isa::sse41, "sse41"}}) {
    if (isa_has(isa, feature)) return name;
  }
  return "generic";
}

}  // namespace patchcore
