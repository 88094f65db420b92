// [NOTE] AVX-512-BF16 kernels: fast mode with bf16 activations and vdpbf16ps instead of int8.
// The weights' q = u - 8 are exact in bf16 (a 16-entry lookup, vpermw), so the only rounding is
// the activations' to bf16 (8 significant bits against q8's 7 bits relative to the group's max):
// a more accurate fast mode at half the int8 VNNI multiply rate, chosen with isa="avx512bf16"
// (the default order prefers the int8 paths: amx, then avx512). Activations are kept as fp32 rows
// already rounded to bf16 (prepare_fast_f32), so converting them back is exact truncation.
//   GEMV: per group, 32 weights -> 32 bf16 -> one vdpbf16ps with the 32 activations, 4 rows per
//         pass sharing the converted activations; one scale FMA per group.
//   GEMM: a block of 32 rows x 8 groups is unpacked once to bf16 pairs [group][2][16 pairs][16 rows]
//         and multiplied by 4 tokens at a time (broadcast bf16 pairs), per-group fp32 sums scaled.
// Exact mode is the AVX-512 VNNI fp32 path.
#ifdef HK2_EMULATE
#include "tests/emu/simd_emu.h"  // SIMDe + AMX tile emulation: test builds only (csrc/tests/)
#else
#include <immintrin.h>
#endif

#include <algorithm>
#include <cmath>

#include "common.h"
#include "int4_moe/int4_moe.h"

namespace hk2 {
namespace avx512bf16 {
namespace {

constexpr bool kVnni = true;
constexpr int P = 4;
#include "int4_moe/int4_moe_generic.inl"
#include "int4_moe/int4_moe_x86.inl"
#include "int4_moe/int4_moe_avx512.inl"

// x -> k-order(P), each value rounded to the nearest bf16 (kept as fp32).
void prepare_bf16_row(const float* x, int n, float* out) {
  permute_row_t<P>(x, n, out);
  for (int i = 0; i < n; ++i) out[i] = bf16_to_f32(f32_to_bf16(out[i]));
}

inline __m512i q_lut() {  // int16 lanes: bf16 bits of u - 8 for u = 0..15
  alignas(64) int16_t t[32] = {};
  for (int u = 0; u < 16; ++u) t[u] = int16_t(f32_to_bf16(float(u - 8)));
  return _mm512_load_si512(t);
}

// One group of one row: 16 packed bytes -> 32 bf16 q in [16 evens | 16 odds] order.
inline __m512i group_bf16(const uint8_t* w16, __m512i lut) {
  const __m128i m4 = _mm_set1_epi8(0x0f);
  const __m128i wv = _mm_loadu_si128(reinterpret_cast<const __m128i*>(w16));
  const __m128i lo = _mm_and_si128(wv, m4), hi = _mm_and_si128(_mm_srli_epi16(wv, 4), m4);
  const __m512i u16 = _mm512_cvtepu8_epi16(_mm256_inserti128_si256(_mm256_castsi128_si256(lo), hi, 1));
  return _mm512_permutexvar_epi16(u16, lut);
}

// 16 + 16 fp32 (already bf16 values) -> 32 bf16 in one vector.
inline __m512i pack_bf16(const float* even, const float* odd) {
  const __m256i e = _mm512_cvtepi32_epi16(_mm512_srli_epi32(_mm512_castps_si512(_mm512_loadu_ps(even)), 16));
  const __m256i o = _mm512_cvtepi32_epi16(_mm512_srli_epi32(_mm512_castps_si512(_mm512_loadu_ps(odd)), 16));
  return _mm512_inserti64x4(_mm512_castsi256_si512(e), o, 1);
}

inline __m512 dot_bf16(__m512 acc, __m512i a, __m512i b) { return _mm512_dpbf16_ps(acc, (__m512bh)a, (__m512bh)b); }

void gemv_bf16(const Int4Matrix& w, int r0, int r1, const Acts& a, const int32_t* idx, int M, float* y, int ldy,
               uint8_t* scratch) {
  const int G = w.cols / 32;
  const int64_t rb = w.cols / 2;
  int32_t* even = reinterpret_cast<int32_t*>(scratch);
  int32_t* odd = even + G;
  group_offsets(G, even, odd);
  const __m512i lut = q_lut();
  for (int r = r0; r < r1; r += 4) {
    const uint8_t* wr = w.packed + int64_t(r) * rb;
    const uint16_t* sr = w.scale + int64_t(r) * G;
    for (int m = 0; m < M; ++m) {
      const float* x = a.f32 + int64_t(idx[m]) * a.ld;
      __m512 acc[4] = {_mm512_setzero_ps(), _mm512_setzero_ps(), _mm512_setzero_ps(), _mm512_setzero_ps()};
      for (int g = 0; g < G; ++g) {
        const __m512i xb = pack_bf16(x + even[g], x + odd[g]);
        for (int j = 0; j < 4; ++j) {
          const uint8_t* p = wr + j * rb + 16 * g;
          if (m == 0 && (g & 3) == 0) _mm_prefetch(reinterpret_cast<const char*>(p + 4 * rb), _MM_HINT_T0);
          const __m512 t = dot_bf16(_mm512_setzero_ps(), group_bf16(p, lut), xb);
          acc[j] = _mm512_fmadd_ps(t, _mm512_set1_ps(bf16_to_f32(sr[j * G + g])), acc[j]);
        }
      }
      for (int j = 0; j < 4; ++j) y[int64_t(m) * ldy + (r - r0) + j] = hsum512(acc[j]);
    }
  }
}

constexpr int kGroupsBf16 = 8;  // 8 groups x 2 KB of bf16 weights per K block

// rows [r, r + 32) x groups [g0, g0 + ng) -> wb [group][2 x 16 rows][16 pairs][16 rows x 2 bf16],
// ws [group][32] fp32.
void unpack_bf16_block(const Int4Matrix& w, int r, int g0, int ng, uint8_t* wb, float* ws, __m512i lut) {
  const int G = w.cols / 32;
  const int64_t rb = w.cols / 2;
  for (int gl = 0; gl < ng; ++gl)
    for (int o = 0; o < 4; ++o) {  // row octets
      __m256i v[2][8];
      for (int i = 0; i < 8; ++i) {
        const __m512i q = group_bf16(w.packed + int64_t(r + 8 * o + i) * rb + 16 * (g0 + gl), lut);
        v[0][i] = _mm512_castsi512_si256(q);                 // pairs 0-7
        v[1][i] = _mm512_extracti64x4_epi64(q, 1);           // pairs 8-15
      }
      uint8_t* dst = wb + int64_t(gl) * 2048 + (o / 2) * 1024 + (o % 2) * 32;
      for (int h = 0; h < 2; ++h) {
        transpose8x8_epi32(v[h]);  // v[h][c] = pair 8h + c of the 8 rows
        for (int c = 0; c < 8; ++c) _mm256_store_si256(reinterpret_cast<__m256i*>(dst + 64 * (8 * h + c)), v[h][c]);
      }
      for (int i = 0; i < 8; ++i) ws[gl * 32 + 8 * o + i] = bf16_to_f32(w.scale[int64_t(r + 8 * o + i) * G + g0 + gl]);
    }
}

template <int MR>
inline void bf16_tokens(const uint8_t* wb, const float* ws, int g0, int ng, const Acts& a, const int32_t* idx, float* y,
                        int ldy, bool first, const int32_t* even, const int32_t* odd, uint16_t* xs) {
  __m512 acc[MR][2];
  for (int m = 0; m < MR; ++m) {
    const float* x = a.f32 + int64_t(idx[m]) * a.ld;
    for (int gl = 0; gl < ng; ++gl) {  // the tokens' bf16 activations of the block, [m][group][32]
      const int g = g0 + gl;
      _mm512_storeu_si512(xs + (m * kGroupsBf16 + gl) * 32, pack_bf16(x + even[g], x + odd[g]));
    }
    for (int s = 0; s < 2; ++s) acc[m][s] = first ? _mm512_setzero_ps() : _mm512_loadu_ps(y + int64_t(m) * ldy + 16 * s);
  }
  for (int gl = 0; gl < ng; ++gl) {
    __m512 t[MR][2];
    for (int m = 0; m < MR; ++m) t[m][0] = t[m][1] = _mm512_setzero_ps();
    const uint8_t* wg = wb + int64_t(gl) * 2048;
    for (int p = 0; p < 16; ++p) {
      const __m512i w0 = _mm512_load_si512(wg + 64 * p), w1 = _mm512_load_si512(wg + 1024 + 64 * p);
      for (int m = 0; m < MR; ++m) {
        int32_t pair;
        std::memcpy(&pair, xs + (m * kGroupsBf16 + gl) * 32 + 2 * p, 4);
        const __m512i xb = _mm512_set1_epi32(pair);
        t[m][0] = dot_bf16(t[m][0], w0, xb);
        t[m][1] = dot_bf16(t[m][1], w1, xb);
      }
    }
    for (int s = 0; s < 2; ++s) {
      const __m512 wsv = _mm512_load_ps(ws + gl * 32 + 16 * s);
      for (int m = 0; m < MR; ++m) acc[m][s] = _mm512_fmadd_ps(t[m][s], wsv, acc[m][s]);
    }
  }
  for (int m = 0; m < MR; ++m)
    for (int s = 0; s < 2; ++s) _mm512_storeu_ps(y + int64_t(m) * ldy + 16 * s, acc[m][s]);
}

void gemm_bf16(const Int4Matrix& w, int r0, int r1, const Acts& a, const int32_t* idx, int M, float* y, int ldy,
               uint8_t* scratch) {
  const int G = w.cols / 32;
  uint8_t* wb = scratch;
  float* ws = reinterpret_cast<float*>(wb + kGroupsBf16 * 2048);
  uint16_t* xs = reinterpret_cast<uint16_t*>(ws + kGroupsBf16 * 32);
  int32_t* even = reinterpret_cast<int32_t*>(xs + 4 * kGroupsBf16 * 32);
  int32_t* odd = even + G;
  group_offsets(G, even, odd);
  const __m512i lut = q_lut();
  for (int r = r0; r < r1; r += 32)
    for (int g0 = 0; g0 < G; g0 += kGroupsBf16) {
      const int ng = std::min(kGroupsBf16, G - g0);
      unpack_bf16_block(w, r, g0, ng, wb, ws, lut);
      float* yr = y + (r - r0);
      int m = 0;
      for (; m + 4 <= M; m += 4) bf16_tokens<4>(wb, ws, g0, ng, a, idx + m, yr + int64_t(m) * ldy, ldy, g0 == 0, even, odd, xs);
      for (; m < M; ++m) bf16_tokens<1>(wb, ws, g0, ng, a, idx + m, yr + int64_t(m) * ldy, ldy, g0 == 0, even, odd, xs);
    }
}

const MoeKernels kTable = {"avx512bf16", P, /*gemm_min_tokens=*/{8, 8}, permute_row_t<P>, quantize_row_t<P>, swiglu_t,
                           gemv_exact, gemm_exact, gemv_bf16, gemm_bf16, prepare_bf16_row};

}  // namespace
}  // namespace avx512bf16

const MoeKernels* kernels_avx512bf16() { return &avx512bf16::kTable; }

}  // namespace hk2
