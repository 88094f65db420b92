// Small helpers shared by every translation unit, including the per-ISA ones.
//
// [NOTE] Everything here is `static inline`: the ISA files are compiled with -mavx2/-mavx512*, and an
// inline function with external linkage compiled there could be picked by the linker for a plain TU
// and run AVX code on a CPU without it. Internal linkage keeps one copy per TU.
#pragma once

#include <cstddef>
#include <cstdint>
#include <cstring>
#include <sstream>
#include <stdexcept>
#include <string>

namespace hk2 {

// Bad input from the caller; the bindings translate it to hybrid_k2.errors.HybridK2Error.
struct Error : std::runtime_error {
  using std::runtime_error::runtime_error;
};

// HK2_CHECK(n > 0, "n must be positive, got " << n)
#define HK2_CHECK(cond, msg)               \
  do {                                     \
    if (!(cond)) {                         \
      std::ostringstream hk2_os_;          \
      hk2_os_ << msg;                      \
      throw ::hk2::Error(hk2_os_.str());   \
    }                                      \
  } while (0)

static inline float bf16_to_f32(uint16_t h) {
  uint32_t u = uint32_t(h) << 16;
  float f;
  std::memcpy(&f, &u, 4);
  return f;
}

// Round to nearest even, NaN kept quiet.
static inline uint16_t f32_to_bf16(float f) {
  uint32_t u;
  std::memcpy(&u, &f, 4);
  if ((u & 0x7fffffffu) > 0x7f800000u) return uint16_t((u >> 16) | 0x40);
  u += 0x7fffu + ((u >> 16) & 1u);
  return uint16_t(u >> 16);
}

static inline int64_t div_up(int64_t a, int64_t b) { return (a + b - 1) / b; }
static inline int64_t round_up(int64_t a, int64_t b) { return div_up(a, b) * b; }

}  // namespace hk2
