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

// ISA paths of the int4 MoE kernels (see isa_names() in cpu_features.cpp for the order).
// Empty string when `isa` can run here; otherwise the reason it cannot.
std::string isa_unavailable_reason(const std::string& isa);
std::vector<std::string> isa_names();

}  // namespace hk2
