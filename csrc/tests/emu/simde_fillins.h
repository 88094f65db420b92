// Gaps and slips of SIMDe 0.7.4 (Debian bookworm) for the intrinsics our AVX-512 kernels use.
#pragma once

// 0.7.4's native alias of _mm512_madd_epi16 takes the four arguments of the masked form.
#undef _mm512_madd_epi16
#define _mm512_madd_epi16(a, b) simde_mm512_madd_epi16(a, b)

// Intrinsics 0.7.4 does not have: plain loops over the lanes (correctness, not speed).
#include <cstdint>
#include <cstring>

namespace hk2_emu {
template <class To, class From>
inline To bits(const From& f) {
  static_assert(sizeof(To) == sizeof(From), "same size");
  To t;
  std::memcpy(&t, &f, sizeof(To));
  return t;
}
inline simde__m512 cvtepi32_ps(simde__m512i a) {
  int32_t v[16];
  float f[16];
  std::memcpy(v, &a, 64);
  for (int i = 0; i < 16; ++i) f[i] = float(v[i]);
  return bits<simde__m512>(f);
}
inline simde__m512i cvtepi8_epi32(simde__m128i a) {
  int8_t v[16];
  int32_t r[16];
  std::memcpy(v, &a, 16);
  for (int i = 0; i < 16; ++i) r[i] = v[i];
  return bits<simde__m512i>(r);
}
inline simde__m512i cvtepu8_epi16(simde__m256i a) {
  uint8_t v[32];
  int16_t r[32];
  std::memcpy(v, &a, 32);
  for (int i = 0; i < 32; ++i) r[i] = v[i];
  return bits<simde__m512i>(r);
}
inline simde__m256i cvtepi32_epi16(simde__m512i a) {
  int32_t v[16];
  int16_t r[16];
  std::memcpy(v, &a, 64);
  for (int i = 0; i < 16; ++i) r[i] = int16_t(v[i]);
  return bits<simde__m256i>(r);
}
}  // namespace hk2_emu

#define _mm512_cvtepi32_ps(a) hk2_emu::cvtepi32_ps(a)
#define _mm512_cvtepi8_epi32(a) hk2_emu::cvtepi8_epi32(a)
#define _mm512_cvtepu8_epi16(a) hk2_emu::cvtepu8_epi16(a)
#define _mm512_cvtepi32_epi16(a) hk2_emu::cvtepi32_epi16(a)
