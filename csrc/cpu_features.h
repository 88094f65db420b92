// What this CPU and OS can run, from cpuid/xgetbv (and the kernel's AMX permission).
#pragma once

#include <string>
#include <vector>

#include "common.h"

namespace hk2 {

struct CpuFeatures {
  bool avx2 = false, fma = false, f16c = false;
  bool avx512f = false, avx512bw = false, avx512vl = false, avx512dq = false;
  bool avx512vnni = false, avx512bf16 = false;
  bool amx_tile = false, amx_int8 = false, amx_bf16 = false;
  bool os_avx = false, os_avx512 = false, os_amx = false;  // XCR0 state enabled, AMX permission given
  std::string brand;
};

const CpuFeatures& cpu_features();

// The ISA registry: every kernel path once, the automatic choice's candidates first in their order
// without a measurement (hybrid_k2/kernels/tuning.py measures among them). Python's lists derive
// from it (_C.isa_registry(), hybrid_k2/kernels/isa.py).
struct IsaInfo {
  const char* name;
  bool automatic;  // a candidate of the automatic choice (else only by HYBRID_K2_ISA / isa=)
  const char* what;
};
const std::vector<IsaInfo>& isa_registry();
std::vector<std::string> isa_names();  // the registry's names, in order

// Empty string when `isa` can run here; otherwise the reason it cannot.
std::string isa_unavailable_reason(const std::string& isa);

// The kernels of a device-side op (int8 linear, MLA attention) for an ISA path of the registry: every
// SIMD path implies AVX2, so such an op has an AVX2 and a scalar kernel; `op` names it in errors.
template <class Kernels>
const Kernels* scalar_or_avx2(const std::string& isa, const Kernels* scalar, const Kernels* avx2, const char* op) {
  const std::string why = isa_unavailable_reason(isa);
  HK2_CHECK(why.empty(), "ISA path '" << isa << "' cannot run here: " << why);
  const Kernels* k = isa == "scalar" ? scalar : avx2;
  HK2_CHECK(k != nullptr, "ISA path '" << isa << "' has no " << op << " kernel in this build");
  return k;
}

}  // namespace hk2
