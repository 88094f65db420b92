// What this CPU and OS can run, from cpuid/xgetbv (and the kernel's AMX permission).
#pragma once

#include <string>
#include <vector>

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

}  // namespace hk2
