// [NOTE] AVX2 + FMA kernels of the INT4 MoE matmuls (k-order P = 2: one 32-byte load of packed
// weights covers two groups; its low nibbles are the "evens" of both groups, its high nibbles the
// "odds", matching the activation layout without shuffles).
//
// GEMV (few tokens per expert; decode): a pure stream over the weights, 4 rows at a time so that
// each activation load serves 4 rows; a token's pass over a 4-row block leaves it in L1 for the
// expert's next tokens.
//   fast:  dot(u, q) per int32 lane with maddubs (u unsigned 0..15, q signed) + madd, minus the
//          precomputed 8 * sum(q) of the lane (c4) to turn u into q_w = u - 8; then one FMA per
//          32 bytes with the per-lane scale scale_w * d_x.
//   exact: nibbles -> int8 -> fp32, FMA with fp32 activations, one scale FMA per group.
// GEMM (many tokens per expert; prefill): a block of 16 weight rows x 32 groups is unpacked once
// into L1 and multiplied by every token, 2 (fast) or 4 (exact) tokens at a time.
//   fast:  u8 weights in a VNNI-like layout [group][8 rows][4 k] so that one broadcast 4-byte
//          activation chunk feeds 8 rows; int16 sums of the 8 chunks of a group (at most 8 * 3810
//          < 32767, no overflow), then madd to int32, cvt, FMA with scale_w * d_x, minus the
//          offset term scale_w * e (e = 8 * d_x * sum q).
//   exact: weights dequantised to fp32 [k][16 rows], 4x16 register tile of FMAs.
#include <immintrin.h>

#include <algorithm>
#include <cmath>
#include <vector>

#include "common.h"
#include "int4_moe/int4_moe.h"

namespace hk2 {
namespace {

#include "int4_moe/int4_moe_generic.inl"

constexpr int P = 2;

#include "int4_moe/int4_moe_x86.inl"

// 8 bf16 -> 8 fp32
inline __m256 load_bf16x8(const uint16_t* p) {
  const __m128i h = _mm_loadu_si128(reinterpret_cast<const __m128i*>(p));
  return _mm256_castsi256_ps(_mm256_slli_epi32(_mm256_cvtepu16_epi32(h), 16));
}

// Two bf16 scales (s0, s1) -> [s0 x4, s1 x4] as fp32.
inline __m256 scale_pair(const uint16_t* p) {
  int32_t two;
  std::memcpy(&two, p, 4);
  const __m256i v = _mm256_set1_epi32(two);
  const __m256i shifted = _mm256_sllv_epi32(v, _mm256_setr_epi32(16, 16, 16, 16, 0, 0, 0, 0));
  return _mm256_castsi256_ps(_mm256_and_si256(shifted, _mm256_set1_epi32(int32_t(0xffff0000u))));
}

// ---------------------------------------------------------------------------------------------
// GEMV, fast (q8 activations)

// Software prefetch: the same bytes of the next 4-row block (4 row lengths ahead). Measured here
// against fixed distances of 0.5-8 KB: from RAM, 1 thread 15 GB/s instead of 11, 2 threads ~28
// instead of ~22 (the hardware prefetchers alone do not keep 4 interleaved row streams ahead).

// One 2-group block of one row: int32 lanes of dot(u, q) (lanes 0-3 first group, 4-7 second).
inline __m256i block_dot_u8(const uint8_t* p, __m256i xa, __m256i xb, __m256i m4, __m256i ones) {
  const __m256i wv = _mm256_loadu_si256(reinterpret_cast<const __m256i*>(p));
  const __m256i lo = _mm256_and_si256(wv, m4);
  const __m256i hi = _mm256_and_si256(_mm256_srli_epi16(wv, 4), m4);
  return _mm256_madd_epi16(_mm256_add_epi16(_mm256_maddubs_epi16(lo, xa), _mm256_maddubs_epi16(hi, xb)), ones);
}

void gemv_fast(const Int4Matrix& w, int r0, int r1, const Acts& a, const int32_t* idx, int M, float* y, int ldy,
               uint8_t*) {
  const int G = w.cols / 32, nblk = G / 2, nchunk = nblk / 4;
  const int64_t rb = w.cols / 2;
  const __m256i m4 = _mm256_set1_epi8(0x0f), ones = _mm256_set1_epi16(1);
  for (int r = r0; r < r1; r += 4) {
    const uint8_t* wr = w.packed + int64_t(r) * rb;
    const uint16_t* sr = w.scale + int64_t(r) * G;
    for (int m = 0; m < M; ++m) {
      const int8_t* q = a.q8 + int64_t(idx[m]) * a.ld;
      const float* d4 = a.d4 + int64_t(idx[m]) * (a.ld / 8);
      const int32_t* c4 = a.c4 + int64_t(idx[m]) * (a.ld / 8);
      const float* e = a.e + int64_t(idx[m]) * (a.ld / 32);
      const float* dg = a.d + int64_t(idx[m]) * (a.ld / 32);
      __m256 acc[4] = {_mm256_setzero_ps(), _mm256_setzero_ps(), _mm256_setzero_ps(), _mm256_setzero_ps()};
      // Chunks of 4 blocks (8 groups, 128 bytes per row): the 8 scales of a row are widened and
      // multiplied by d_x once, then spread over the lanes with a permute; the nibble offset is taken off once per chunk as
      // sum_g scale_w[g] * e[g] instead of per block.
      for (int c = 0; c < nchunk; ++c) {
        for (int j = 0; j < 4; ++j) {
          const uint8_t* p = wr + j * rb + 128 * c;
          if (m == 0) {
            _mm_prefetch(reinterpret_cast<const char*>(p + 4 * rb), _MM_HINT_T0);
            _mm_prefetch(reinterpret_cast<const char*>(p + 4 * rb + 64), _MM_HINT_T0);
          }
          const __m256 sw8 = load_bf16x8(sr + j * G + 8 * c);
          acc[j] = _mm256_fnmadd_ps(sw8, _mm256_loadu_ps(e + 8 * c), acc[j]);
          const __m256 sc8 = _mm256_mul_ps(sw8, _mm256_loadu_ps(dg + 8 * c));  // scale_w * d_x per group
          for (int bb = 0; bb < 4; ++bb) {
            const int b = 4 * c + bb;
            const __m256i xa = _mm256_loadu_si256(reinterpret_cast<const __m256i*>(q + 64 * b));
            const __m256i xb = _mm256_loadu_si256(reinterpret_cast<const __m256i*>(q + 64 * b + 32));
            const __m256i s32 = block_dot_u8(p + 32 * bb, xa, xb, m4, ones);
            const __m256i lanes = _mm256_setr_epi32(2 * bb, 2 * bb, 2 * bb, 2 * bb, 2 * bb + 1, 2 * bb + 1,
                                                    2 * bb + 1, 2 * bb + 1);
            acc[j] = _mm256_fmadd_ps(_mm256_cvtepi32_ps(s32), _mm256_permutevar8x32_ps(sc8, lanes), acc[j]);
          }
        }
      }
      for (int b = 4 * nchunk; b < nblk; ++b) {  // remaining blocks: offset taken off per block (c4)
        const __m256i xa = _mm256_loadu_si256(reinterpret_cast<const __m256i*>(q + 64 * b));
        const __m256i xb = _mm256_loadu_si256(reinterpret_cast<const __m256i*>(q + 64 * b + 32));
        const __m256i cr = _mm256_loadu_si256(reinterpret_cast<const __m256i*>(c4 + 8 * b));
        const __m256 dx = _mm256_loadu_ps(d4 + 8 * b);
        for (int j = 0; j < 4; ++j) {
          const __m256i s32 = _mm256_sub_epi32(block_dot_u8(wr + j * rb + 32 * b, xa, xb, m4, ones), cr);
          const __m256 sc = _mm256_mul_ps(scale_pair(sr + j * G + 2 * b), dx);
          acc[j] = _mm256_fmadd_ps(_mm256_cvtepi32_ps(s32), sc, acc[j]);
        }
      }
      float tail[4] = {0.f, 0.f, 0.f, 0.f};
      for (int g = 2 * nblk; g < G; ++g)  // last group alone
        for (int j = 0; j < 4; ++j)
          tail[j] += bf16_to_f32(sr[j * G + g]) * d4[4 * g] *
                     float(group_dot_q8_sse(wr + j * rb + 16 * g, q + 32 * g, c4 + 4 * g));
      for (int j = 0; j < 4; ++j) y[int64_t(m) * ldy + (r - r0) + j] = hsum(acc[j]) + tail[j];
    }
  }
}

// ---------------------------------------------------------------------------------------------
// GEMV, exact (fp32 activations)

// acc += scale * sum_{i<16} (q_even[i] * xe[i] + q_odd[i] * xo[i]) for one group, q as int8 x16.
inline __m256 group_dot_f32(__m128i qe, __m128i qo, const float* xe, const float* xo) {
  __m256 t = _mm256_mul_ps(_mm256_cvtepi32_ps(_mm256_cvtepi8_epi32(qe)), _mm256_loadu_ps(xe));
  t = _mm256_fmadd_ps(_mm256_cvtepi32_ps(_mm256_cvtepi8_epi32(_mm_srli_si128(qe, 8))), _mm256_loadu_ps(xe + 8), t);
  t = _mm256_fmadd_ps(_mm256_cvtepi32_ps(_mm256_cvtepi8_epi32(qo)), _mm256_loadu_ps(xo), t);
  t = _mm256_fmadd_ps(_mm256_cvtepi32_ps(_mm256_cvtepi8_epi32(_mm_srli_si128(qo, 8))), _mm256_loadu_ps(xo + 8), t);
  return t;
}

void gemv_exact(const Int4Matrix& w, int r0, int r1, const Acts& a, const int32_t* idx, int M, float* y,
                int ldy, uint8_t*) {
  const int G = w.cols / 32, nblk = G / 2;
  const int64_t rb = w.cols / 2;
  const __m256i m4 = _mm256_set1_epi8(0x0f), eight = _mm256_set1_epi8(8);
  for (int r = r0; r < r1; ++r) {
    const uint8_t* wr = w.packed + int64_t(r) * rb;
    const uint16_t* sr = w.scale + int64_t(r) * G;
    for (int m = 0; m < M; ++m) {
      const float* x = a.f32 + int64_t(idx[m]) * a.ld;
      __m256 acc0 = _mm256_setzero_ps(), acc1 = _mm256_setzero_ps();
      for (int b = 0; b < nblk; ++b) {
        const uint8_t* p = wr + 32 * b;
        if (m == 0 && (b & 1) == 0) _mm_prefetch(reinterpret_cast<const char*>(p + 4 * rb), _MM_HINT_T0);
        const __m256i wv = _mm256_loadu_si256(reinterpret_cast<const __m256i*>(p));
        const __m256i lo = _mm256_sub_epi8(_mm256_and_si256(wv, m4), eight);
        const __m256i hi = _mm256_sub_epi8(_mm256_and_si256(_mm256_srli_epi16(wv, 4), m4), eight);
        const float* xb = x + 64 * b;  // [g0 evens | g1 evens | g0 odds | g1 odds]
        const __m256 t0 = group_dot_f32(_mm256_castsi256_si128(lo), _mm256_castsi256_si128(hi), xb, xb + 32);
        const __m256 t1 = group_dot_f32(_mm256_extracti128_si256(lo, 1), _mm256_extracti128_si256(hi, 1), xb + 16, xb + 48);
        acc0 = _mm256_fmadd_ps(t0, _mm256_set1_ps(bf16_to_f32(sr[2 * b])), acc0);
        acc1 = _mm256_fmadd_ps(t1, _mm256_set1_ps(bf16_to_f32(sr[2 * b + 1])), acc1);
      }
      if (G & 1) {
        const int g = G - 1;
        const __m128i wv = _mm_loadu_si128(reinterpret_cast<const __m128i*>(wr + 16 * g));
        const __m128i lo = _mm_sub_epi8(_mm_and_si128(wv, _mm256_castsi256_si128(m4)), _mm256_castsi256_si128(eight));
        const __m128i hi = _mm_sub_epi8(_mm_and_si128(_mm_srli_epi16(wv, 4), _mm256_castsi256_si128(m4)),
                                        _mm256_castsi256_si128(eight));
        const __m256 t = group_dot_f32(lo, hi, x + 32 * g, x + 32 * g + 16);
        acc0 = _mm256_fmadd_ps(t, _mm256_set1_ps(bf16_to_f32(sr[g])), acc0);
      }
      y[int64_t(m) * ldy + (r - r0)] = hsum(_mm256_add_ps(acc0, acc1));
    }
  }
}

// ---------------------------------------------------------------------------------------------
// GEMM helpers

constexpr int kGemmGroups = 32;  // groups per K block (a multiple of P)

// ---------------------------------------------------------------------------------------------
// GEMM, fast

// Scratch: wq [kGemmGroups][2][8 chunks][8 rows][4 B] u8, ws [kGemmGroups][16] fp32, offsets.
struct FastBlock {
  uint8_t* wq;
  float* ws;
};

// acc[m][s] over groups [0, ng) of the block, MR tokens x 16 rows.
template <int MR>
inline void fast_tile(const FastBlock& blk, int g0, int ng, const int8_t* const* q, const float* const* d4,
                      const float* const* e, const int32_t* even, const int32_t* odd, __m256* acc) {
  const __m256i ones = _mm256_set1_epi16(1);
  for (int gl = 0; gl < ng; ++gl) {
    const int g = g0 + gl;
    __m256i s16[MR][2];
    for (int m = 0; m < MR; ++m) s16[m][0] = s16[m][1] = _mm256_setzero_si256();
    const uint8_t* wg = blk.wq + int64_t(gl) * 512;
    for (int c = 0; c < 8; ++c) {
      const __m256i w0 = _mm256_load_si256(reinterpret_cast<const __m256i*>(wg + 32 * c));
      const __m256i w1 = _mm256_load_si256(reinterpret_cast<const __m256i*>(wg + 256 + 32 * c));
      const int off = c < 4 ? even[g] + 4 * c : odd[g] + 4 * (c - 4);
      for (int m = 0; m < MR; ++m) {
        int32_t chunk;
        std::memcpy(&chunk, q[m] + off, 4);
        const __m256i xb = _mm256_set1_epi32(chunk);
        s16[m][0] = _mm256_add_epi16(s16[m][0], _mm256_maddubs_epi16(w0, xb));
        s16[m][1] = _mm256_add_epi16(s16[m][1], _mm256_maddubs_epi16(w1, xb));
      }
    }
    for (int s = 0; s < 2; ++s) {
      const __m256 ws = _mm256_load_ps(blk.ws + gl * 16 + 8 * s);
      for (int m = 0; m < MR; ++m) {
        const __m256 f = _mm256_cvtepi32_ps(_mm256_madd_epi16(s16[m][s], ones));
        acc[2 * m + s] = _mm256_fmadd_ps(f, _mm256_mul_ps(ws, _mm256_set1_ps(d4[m][4 * g])), acc[2 * m + s]);
        acc[2 * m + s] = _mm256_fnmadd_ps(ws, _mm256_set1_ps(e[m][g]), acc[2 * m + s]);
      }
    }
  }
}

template <int MR>
inline void fast_tokens(const FastBlock& blk, int g0, int ng, const Acts& a, const int32_t* idx, float* y, int ldy,
                        bool first, const int32_t* even, const int32_t* odd) {
  const int8_t* q[MR];
  const float* d4[MR];
  const float* e[MR];
  __m256 acc[2 * MR];
  for (int m = 0; m < MR; ++m) {
    q[m] = a.q8 + int64_t(idx[m]) * a.ld;
    d4[m] = a.d4 + int64_t(idx[m]) * (a.ld / 8);
    e[m] = a.e + int64_t(idx[m]) * (a.ld / 32);
    for (int s = 0; s < 2; ++s)
      acc[2 * m + s] = first ? _mm256_setzero_ps() : _mm256_loadu_ps(y + int64_t(m) * ldy + 8 * s);
  }
  fast_tile<MR>(blk, g0, ng, q, d4, e, even, odd, acc);
  for (int m = 0; m < MR; ++m)
    for (int s = 0; s < 2; ++s) _mm256_storeu_ps(y + int64_t(m) * ldy + 8 * s, acc[2 * m + s]);
}

void gemm_fast(const Int4Matrix& w, int r0, int r1, const Acts& a, const int32_t* idx, int M, float* y, int ldy,
               uint8_t* scratch) {
  const int G = w.cols / 32;
  FastBlock blk{scratch, reinterpret_cast<float*>(scratch + kGemmGroups * 512)};
  int32_t* even = reinterpret_cast<int32_t*>(scratch + kGemmGroups * 512 + kGemmGroups * 64);
  int32_t* odd = even + G;
  HK2_CHECK(kGemmGroups * (512 + 64) + 8 * G <= kScratchBytes, "gemm_fast: matrix too wide for the scratch");
  group_offsets(G, even, odd);
  for (int r = r0; r < r1; r += 16)
    for (int g0 = 0; g0 < G; g0 += kGemmGroups) {
      const int ng = std::min(kGemmGroups, G - g0);
      unpack_fast_block<8, 16>(w, r, g0, ng, blk.wq, blk.ws);
      float* yr = y + (r - r0);
      int m = 0;
      for (; m + 2 <= M; m += 2) fast_tokens<2>(blk, g0, ng, a, idx + m, yr + int64_t(m) * ldy, ldy, g0 == 0, even, odd);
      if (m < M) fast_tokens<1>(blk, g0, ng, a, idx + m, yr + int64_t(m) * ldy, ldy, g0 == 0, even, odd);
    }
}

// ---------------------------------------------------------------------------------------------
// GEMM, exact

constexpr int kExactGroups = 8;  // 256 k x 16 rows x 4 B = 16 KB per block

template <int MR>
inline void exact_tokens(const float* wf, int g0, int ng, const Acts& a, const int32_t* idx, float* y, int ldy,
                         bool first, const int32_t* even, const int32_t* odd) {
  const float* x[MR];
  __m256 acc[MR][2];
  for (int m = 0; m < MR; ++m) {
    x[m] = a.f32 + int64_t(idx[m]) * a.ld;
    for (int s = 0; s < 2; ++s) acc[m][s] = first ? _mm256_setzero_ps() : _mm256_loadu_ps(y + int64_t(m) * ldy + 8 * s);
  }
  for (int gl = 0; gl < ng; ++gl) {
    const int g = g0 + gl;
    const float* wg = wf + int64_t(gl) * 32 * 16;
    for (int k = 0; k < 32; ++k) {
      const __m256 w0 = _mm256_load_ps(wg + 16 * k), w1 = _mm256_load_ps(wg + 16 * k + 8);
      const int off = k < 16 ? even[g] + k : odd[g] + (k - 16);
      for (int m = 0; m < MR; ++m) {
        const __m256 xb = _mm256_broadcast_ss(x[m] + off);
        acc[m][0] = _mm256_fmadd_ps(w0, xb, acc[m][0]);
        acc[m][1] = _mm256_fmadd_ps(w1, xb, acc[m][1]);
      }
    }
  }
  for (int m = 0; m < MR; ++m)
    for (int s = 0; s < 2; ++s) _mm256_storeu_ps(y + int64_t(m) * ldy + 8 * s, acc[m][s]);
}

void gemm_exact(const Int4Matrix& w, int r0, int r1, const Acts& a, const int32_t* idx, int M, float* y, int ldy,
                uint8_t* scratch) {
  const int G = w.cols / 32;
  float* wf = reinterpret_cast<float*>(scratch);
  int32_t* even = reinterpret_cast<int32_t*>(scratch + kExactGroups * 32 * 16 * 4);
  int32_t* odd = even + G;
  HK2_CHECK(kExactGroups * 32 * 16 * 4 + 8 * G <= kScratchBytes, "gemm_exact: matrix too wide for the scratch");
  group_offsets(G, even, odd);
  for (int r = r0; r < r1; r += 16)
    for (int g0 = 0; g0 < G; g0 += kExactGroups) {
      const int ng = std::min(kExactGroups, G - g0);
      unpack_exact_block16(w, r, g0, ng, wf);
      float* yr = y + (r - r0);
      int m = 0;
      for (; m + 4 <= M; m += 4) exact_tokens<4>(wf, g0, ng, a, idx + m, yr + int64_t(m) * ldy, ldy, g0 == 0, even, odd);
      for (; m < M; ++m) exact_tokens<1>(wf, g0, ng, a, idx + m, yr + int64_t(m) * ldy, ldy, g0 == 0, even, odd);
    }
}

const MoeKernels kAvx2 = {
    "avx2", P, /*gemm_min_tokens=*/{4, 10},  // measured here (Zen 3), docs/kernels.md
    permute_row_t<P>, quantize_row_t<P>, swiglu_t,
    gemv_exact, gemm_exact, gemv_fast, gemm_fast,
};

}  // namespace

const MoeKernels* kernels_avx2() { return &kAvx2; }

}  // namespace hk2
