// AVX-512 int8 peaks, the counterparts of peak_avx2.cpp for the rows of bench/bench_moe.py that run
// the AVX-512 paths: the avx512 path multiplies with vpmaddubsw + vpaddw on 64 bytes, the avx512vnni
// (and avx512bf16, whose int8 work is VNNI) path with vpdpbusd (64 u8 x s8 products summed in fours).
// 12 independent chains so that only throughput counts; the operand is "new" every round (empty asm)
// so the product cannot be hoisted out of the loop. Compiled without -mavx512vnni (file suffix); the
// VNNI loop enables it with a target pragma, as int4_moe_avx512.cpp does.
#ifdef HK2_EMULATE
#include "tests/emu/simd_emu.h"  // SIMDe: the test build checks the loops run, its timing means nothing
#define HK2_KEEP(v) (void)0
#else
#include <immintrin.h>
#define HK2_KEEP(v) __asm__ volatile("" : "+v"(v))
#endif

#include <cstdint>

namespace hk2 {

// Each runs `iters` rounds and returns the int8 multiply-adds done (2 ops each).
int64_t int8_peak_avx512(int64_t iters, int seed) {
  __m512i a = _mm512_set1_epi8(char(3 + (seed & 1)));
  const __m512i b = _mm512_set1_epi8(char(-2 - (seed & 1)));
  __m512i acc[12];
  for (auto& v : acc) v = _mm512_setzero_si512();
  for (int64_t i = 0; i < iters; ++i)
    for (auto& v : acc) {
      HK2_KEEP(a);
      v = _mm512_add_epi16(v, _mm512_maddubs_epi16(a, b));
      HK2_KEEP(v);
    }
  __m512i s = acc[0];
  for (int j = 1; j < 12; ++j) s = _mm512_add_epi16(s, acc[j]);
  volatile int sink = _mm_extract_epi16(_mm512_castsi512_si128(s), 0);
  (void)sink;
  return iters * 12 * 64;
}

#ifndef HK2_EMULATE
#pragma GCC push_options
#pragma GCC target("avx512vnni")
#endif
int64_t int8_peak_avx512vnni(int64_t iters, int seed) {
  __m512i a = _mm512_set1_epi8(char(3 + (seed & 1)));
  const __m512i b = _mm512_set1_epi8(char(-2 - (seed & 1)));
  __m512i acc[12];
  for (auto& v : acc) v = _mm512_setzero_si512();
  for (int64_t i = 0; i < iters; ++i)
    for (auto& v : acc) {
      HK2_KEEP(a);
      v = _mm512_dpbusd_epi32(v, a, b);
      HK2_KEEP(v);
    }
  __m512i s = acc[0];
  for (int j = 1; j < 12; ++j) s = _mm512_add_epi32(s, acc[j]);
  volatile int sink = _mm_cvtsi128_si32(_mm512_castsi512_si128(s));
  (void)sink;
  return iters * 12 * 64;
}
#ifndef HK2_EMULATE
#pragma GCC pop_options
#endif

}  // namespace hk2
