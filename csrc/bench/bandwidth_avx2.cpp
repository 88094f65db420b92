// Read-only memory probe: the loop a decode kernel would be if unpacking cost nothing.
#include <immintrin.h>

#include <cstddef>
#include <cstdint>

namespace hk2 {

// Sums bytes [0, n) of p (n a multiple of 256) as 32-bit ints; 8 independent accumulators so the
// loop is bound by loads, not by add latency.
int64_t read_sum_avx2(const uint8_t* p, size_t n) {
  __m256i acc[8];
  for (auto& a : acc) a = _mm256_setzero_si256();
  for (size_t i = 0; i < n; i += 256)
    for (int j = 0; j < 8; ++j)
      acc[j] = _mm256_add_epi32(acc[j], _mm256_load_si256(reinterpret_cast<const __m256i*>(p + i + 32 * j)));
  alignas(32) int32_t lanes[8];
  for (int j = 1; j < 8; ++j) acc[0] = _mm256_add_epi32(acc[0], acc[j]);
  _mm256_store_si256(reinterpret_cast<__m256i*>(lanes), acc[0]);
  int64_t s = 0;
  for (int32_t v : lanes) s += v;
  return s;
}

}  // namespace hk2
