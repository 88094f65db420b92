// [NOTE] AVX2 + FMA kernels of the int8 linear (see int8_linear.h for the math and layout).
//
// GEMV: 4 weight rows at a time, so that each activation load (8 fp32) serves 4 rows; an int8 -> fp32
// widening (vpmovsxbd + vcvtdq2ps) and an FMA per 8 weights, two accumulators per row to hide the FMA
// latency, the per-row scale applied once at the end. About 3 instructions per 8 weight bytes: far
// above what memory delivers per core, so the stream runs at the bus's speed. The next 4-row block is
// prefetched 4 row lengths ahead, as in the INT4 GEMV (the hardware prefetchers alone do not keep 4
// interleaved row streams ahead). The T tokens of a call pass over a 4-row block while it is in cache.
// GEMM: rows in blocks of NC = 64, K in slices of KC = 512. A block's slice is widened to fp32 once
// into per-thread scratch [64][512] (128 KB, L2; a plain row-major copy, no transposition) and then
// multiplied by every token: MR = 3 tokens x NR = 4 rows of 8-wide accumulators (12 registers) fed by
// 3 activation and 4 weight loads per 12 FMAs, each reduced once per slice. The scales are applied
// in one pass over the block at the end.
#include <immintrin.h>

#include <algorithm>

#include "common.h"
#include "int8_linear/int8_linear.h"

namespace hk2 {
namespace {

constexpr int NR = 4, MR = 3, KC = 512, NC = 64;

inline float hsum(__m256 v) {
  const __m128 s = _mm_add_ps(_mm256_castps256_ps128(v), _mm256_extractf128_ps(v, 1));
  const __m128 h = _mm_add_ps(s, _mm_movehl_ps(s, s));
  return _mm_cvtss_f32(_mm_add_ss(h, _mm_movehdup_ps(h)));
}

// 8 int8 -> 8 fp32
inline __m256 widen8(const int8_t* p) {
  return _mm256_cvtepi32_ps(_mm256_cvtepi8_epi32(_mm_loadl_epi64(reinterpret_cast<const __m128i*>(p))));
}

// ---------------------------------------------------------------------------------------------
// GEMV

template <int R>  // R rows at a time (4, or 1 for the last rows)
void gemv_rows(const float* x, int64_t ldx, int T, const int8_t* w, int64_t in, const float* scale, float* y,
               int64_t ldy, bool prefetch) {
  const int64_t k32 = in / 32 * 32;
  for (int t = 0; t < T; ++t) {
    const float* xt = x + int64_t(t) * ldx;
    __m256 acc[R][2];
    for (int j = 0; j < R; ++j) acc[j][0] = acc[j][1] = _mm256_setzero_ps();
    for (int64_t k = 0; k < k32; k += 32) {
      const __m256 x0 = _mm256_loadu_ps(xt + k), x1 = _mm256_loadu_ps(xt + k + 8);
      const __m256 x2 = _mm256_loadu_ps(xt + k + 16), x3 = _mm256_loadu_ps(xt + k + 24);
      for (int j = 0; j < R; ++j) {
        const int8_t* p = w + j * in + k;
        if (prefetch && t == 0 && (k & 63) == 0) _mm_prefetch(reinterpret_cast<const char*>(p + R * in), _MM_HINT_T0);
        acc[j][0] = _mm256_fmadd_ps(widen8(p), x0, acc[j][0]);
        acc[j][1] = _mm256_fmadd_ps(widen8(p + 8), x1, acc[j][1]);
        acc[j][0] = _mm256_fmadd_ps(widen8(p + 16), x2, acc[j][0]);
        acc[j][1] = _mm256_fmadd_ps(widen8(p + 24), x3, acc[j][1]);
      }
    }
    for (int j = 0; j < R; ++j) {
      float s = hsum(_mm256_add_ps(acc[j][0], acc[j][1]));
      for (int64_t k = k32; k < in; ++k) s += xt[k] * float(w[j * in + k]);
      y[int64_t(t) * ldy + j] = scale[j] * s;
    }
  }
}

void gemv(const float* x, int64_t ldx, int T, const int8_t* q, int64_t in, const float* scale, int r0, int r1,
          float* y, int64_t ldy, float*) {
  int r = r0;
  for (; r + 4 <= r1; r += 4)
    gemv_rows<4>(x, ldx, T, q + int64_t(r) * in, in, scale + r, y + r, ldy, r + 8 <= r1);
  for (; r < r1; ++r) gemv_rows<1>(x, ldx, T, q + int64_t(r) * in, in, scale + r, y + r, ldy, false);
}

// ---------------------------------------------------------------------------------------------
// GEMM

// rows [r0, r0 + nr) x columns [k0, k0 + kc) -> wp[r][k] fp32, row-major (a plain widening copy)
void pack_block(const int8_t* q, int64_t in, int r0, int nr, int64_t k0, int kc, float* wp) {
  for (int r = 0; r < nr; ++r) {
    const int8_t* src = q + int64_t(r0 + r) * in + k0;
    float* dst = wp + int64_t(r) * KC;
    int k = 0;
    for (; k + 8 <= kc; k += 8) _mm256_storeu_ps(dst + k, widen8(src + k));
    for (; k < kc; ++k) dst[k] = float(src[k]);
  }
}

// y[m][j] += sum_k x[m][k] * wp[j][k] for M tokens x R rows: M x R vector accumulators over k, reduced
// once at the end (a dot-product tile: no transposed packing needed).
template <int M, int R>
void micro(const float* x, int64_t ldx, const float* wp, int kc, float* y, int64_t ldy) {
  __m256 acc[M][R];
  for (int m = 0; m < M; ++m)
    for (int j = 0; j < R; ++j) acc[m][j] = _mm256_setzero_ps();
  const int k8 = kc / 8 * 8;
  for (int k = 0; k < k8; k += 8) {
    __m256 w[R];
    for (int j = 0; j < R; ++j) w[j] = _mm256_loadu_ps(wp + j * KC + k);
    for (int m = 0; m < M; ++m) {
      const __m256 xv = _mm256_loadu_ps(x + m * ldx + k);
      for (int j = 0; j < R; ++j) acc[m][j] = _mm256_fmadd_ps(xv, w[j], acc[m][j]);
    }
  }
  for (int m = 0; m < M; ++m)
    for (int j = 0; j < R; ++j) {
      float s = hsum(acc[m][j]);
      for (int k = k8; k < kc; ++k) s += x[m * ldx + k] * wp[j * KC + k];
      y[m * ldy + j] += s;
    }
}

template <int R>
void micro_m(int M, const float* x, int64_t ldx, const float* wp, int kc, float* y, int64_t ldy) {
  switch (M) {
    case 3: return micro<3, R>(x, ldx, wp, kc, y, ldy);
    case 2: return micro<2, R>(x, ldx, wp, kc, y, ldy);
    default: return micro<1, R>(x, ldx, wp, kc, y, ldy);
  }
}

// Rows [r0, r1), r1 - r0 <= NC (the driver hands out NC-row items).
void gemm(const float* x, int64_t ldx, int T, const int8_t* q, int64_t in, const float* scale, int r0, int r1,
          float* y, int64_t ldy, float* wp) {
  const int nr = r1 - r0;
  for (int t = 0; t < T; ++t)
    for (int i = 0; i < nr; ++i) y[int64_t(t) * ldy + r0 + i] = 0.f;
  for (int64_t k0 = 0; k0 < in; k0 += KC) {
    const int kc = int(std::min<int64_t>(KC, in - k0));
    pack_block(q, in, r0, nr, k0, kc, wp);
    for (int t0 = 0; t0 < T; t0 += MR) {
      const int M = std::min(MR, T - t0);
      const float* xt = x + int64_t(t0) * ldx + k0;
      float* yt = y + int64_t(t0) * ldy + r0;
      int j = 0;
      for (; j + NR <= nr; j += NR) micro_m<NR>(M, xt, ldx, wp + int64_t(j) * KC, kc, yt + j, ldy);
      for (; j < nr; ++j) micro_m<1>(M, xt, ldx, wp + int64_t(j) * KC, kc, yt + j, ldy);
    }
  }
  for (int t = 0; t < T; ++t)
    for (int i = 0; i < nr; ++i) y[int64_t(t) * ldy + r0 + i] *= scale[r0 + i];
}

const Int8LinearKernels kAvx2{"avx2", gemv, gemm, NC, int64_t(NC) * KC};

}  // namespace

const Int8LinearKernels* int8_kernels_avx2() { return &kAvx2; }

}  // namespace hk2
