// AVX2 int8 peak: the best an int8 kernel can do here, vpmaddubsw (32 u8 x s8 products summed in
// pairs) + vpaddw per 32 multiply-adds, on 12 independent chains so that only throughput counts.
#include <immintrin.h>

#include <cstdint>

namespace hk2 {

// Runs `iters` rounds; returns the int8 multiply-adds done (2 flops each).
int64_t int8_peak_avx2(int64_t iters, int seed) {
  __m256i a = _mm256_set1_epi8(char(3 + (seed & 1)));
  const __m256i b = _mm256_set1_epi8(char(-2 - (seed & 1)));
  __m256i acc[12];
  for (auto& v : acc) v = _mm256_setzero_si256();
  for (int64_t i = 0; i < iters; ++i)
    for (auto& v : acc) {
      __asm__ volatile("" : "+x"(a));  // a is "new" each time: the product cannot be hoisted out of the loop
      v = _mm256_add_epi16(v, _mm256_maddubs_epi16(a, b));
      __asm__ volatile("" : "+x"(v));  // keep every round
    }
  __m256i s = acc[0];
  for (int j = 1; j < 12; ++j) s = _mm256_add_epi16(s, acc[j]);
  volatile int sink = _mm256_extract_epi16(s, 0);
  (void)sink;
  return iters * 12 * 32;
}

}  // namespace hk2
