// [NOTE] AVX2 + FMA block step of the absorbed MLA attention (math in mla_attention_ref.cpp).
//
// Scores: dot products of rows, MR = 4 query rows x NR = 3 positions of 8-wide accumulators (12
// registers) fed by 4 + 3 loads per 12 FMAs along K, each reduced once per pair at the end (one
// horizontal sum per 72 FMAs for K2's K = 576): no transposed copy of the block is needed.
// Softmax: an 8-wide exp (Cephes' polynomial, relative error ~1e-7) over each row's <= 32 scores.
// Values: acc[g, c] += sum_j p[g, j] kv[j, c] in tiles of 4 rows x 16 columns (8 registers) fed by 2
// loads and 4 broadcasts per 8 FMAs; a tile's 16 columns of the block's rows (2 KB) stay in L1.
// Folds (W_UK into the queries, W_UV out of the latent output): per-head GEMVs streaming the weight,
// fp32 or int8 (widened in registers).
#include <immintrin.h>

#include <algorithm>
#include <cmath>
#include <type_traits>

#include "common.h"
#include "mla_attention/mla_attention.h"

namespace hk2 {
namespace {

inline float hsum(__m256 v) {
  const __m128 s = _mm_add_ps(_mm256_castps256_ps128(v), _mm256_extractf128_ps(v, 1));
  const __m128 h = _mm_add_ps(s, _mm_movehl_ps(s, s));
  return _mm_cvtss_f32(_mm_add_ss(h, _mm_movehdup_ps(h)));
}

// e^x for x <= 0 (scores minus their running max), clamped below at -87 (e^-87 ~ 1.6e-38).
inline __m256 exp8(__m256 x) {
  x = _mm256_max_ps(x, _mm256_set1_ps(-87.f));
  const __m256 n = _mm256_round_ps(_mm256_mul_ps(x, _mm256_set1_ps(1.44269504088896341f)),
                                   _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC);
  __m256 r = _mm256_fnmadd_ps(n, _mm256_set1_ps(0.693359375f), x);
  r = _mm256_fnmadd_ps(n, _mm256_set1_ps(-2.12194440e-4f), r);
  __m256 p = _mm256_set1_ps(1.9875691500e-4f);
  p = _mm256_fmadd_ps(p, r, _mm256_set1_ps(1.3981999507e-3f));
  p = _mm256_fmadd_ps(p, r, _mm256_set1_ps(8.3334519073e-3f));
  p = _mm256_fmadd_ps(p, r, _mm256_set1_ps(4.1665795894e-2f));
  p = _mm256_fmadd_ps(p, r, _mm256_set1_ps(1.6666665459e-1f));
  p = _mm256_fmadd_ps(p, r, _mm256_set1_ps(5.0000001201e-1f));
  p = _mm256_fmadd_ps(_mm256_mul_ps(p, r), r, _mm256_add_ps(r, _mm256_set1_ps(1.f)));
  const __m256i e = _mm256_slli_epi32(_mm256_add_epi32(_mm256_cvtps_epi32(n), _mm256_set1_epi32(127)), 23);
  return _mm256_mul_ps(p, _mm256_castsi256_ps(e));
}

// s[i, j] = q[i] . kv[j] for MR rows x NR positions.
template <int MR, int NR>
inline void dots(const float* q, int K, const float* kv, float* s) {
  __m256 c[MR][NR];
  for (int i = 0; i < MR; ++i)
    for (int j = 0; j < NR; ++j) c[i][j] = _mm256_setzero_ps();
  const int K8 = K & ~7;
  for (int k = 0; k < K8; k += 8) {
    __m256 b[NR];
    for (int j = 0; j < NR; ++j) b[j] = _mm256_loadu_ps(kv + int64_t(j) * K + k);
    for (int i = 0; i < MR; ++i) {
      const __m256 a = _mm256_loadu_ps(q + int64_t(i) * K + k);
      for (int j = 0; j < NR; ++j) c[i][j] = _mm256_fmadd_ps(a, b[j], c[i][j]);
    }
  }
  for (int i = 0; i < MR; ++i)
    for (int j = 0; j < NR; ++j) {
      float d = hsum(c[i][j]);
      for (int k = K8; k < K; ++k) d += q[int64_t(i) * K + k] * kv[int64_t(j) * K + k];
      s[i * kMlaBlock + j] = d;
    }
}

template <int MR>
inline void dots_row_block(const float* q, int K, const float* kv, int n, float* s) {
  int j = 0;
  for (; j + 3 <= n; j += 3) dots<MR, 3>(q, K, kv + int64_t(j) * K, s + j);
  if (n - j == 2) dots<MR, 2>(q, K, kv + int64_t(j) * K, s + j);
  if (n - j == 1) dots<MR, 1>(q, K, kv + int64_t(j) * K, s + j);
}

// acc[i, :R] += sum_{j < n} p[i, j] kv[j, :R] for MR rows.
template <int MR>
inline void weigh(const float* p, const float* kv, int n, int K, int R, float* acc) {
  const int R16 = R & ~15;
  for (int c = 0; c < R16; c += 16) {
    __m256 o[MR][2];
    for (int i = 0; i < MR; ++i) {
      o[i][0] = _mm256_loadu_ps(acc + int64_t(i) * R + c);
      o[i][1] = _mm256_loadu_ps(acc + int64_t(i) * R + c + 8);
    }
    for (int j = 0; j < n; ++j) {
      const __m256 v0 = _mm256_loadu_ps(kv + int64_t(j) * K + c), v1 = _mm256_loadu_ps(kv + int64_t(j) * K + c + 8);
      for (int i = 0; i < MR; ++i) {
        const __m256 w = _mm256_broadcast_ss(p + i * kMlaBlock + j);
        o[i][0] = _mm256_fmadd_ps(w, v0, o[i][0]);
        o[i][1] = _mm256_fmadd_ps(w, v1, o[i][1]);
      }
    }
    for (int i = 0; i < MR; ++i) {
      _mm256_storeu_ps(acc + int64_t(i) * R + c, o[i][0]);
      _mm256_storeu_ps(acc + int64_t(i) * R + c + 8, o[i][1]);
    }
  }
  for (int i = 0; i < MR; ++i)
    for (int c = R16; c < R; ++c) {
      float a = acc[int64_t(i) * R + c];
      for (int j = 0; j < n; ++j) a += p[i * kMlaBlock + j] * kv[int64_t(j) * K + c];
      acc[int64_t(i) * R + c] = a;
    }
}

// Row g's online-softmax update from its scores s[0, v): p written over s (zeros from v to n).
inline void softmax_row(float* s, int v, int n, int R, float& m, float& l, float* acc) {
  float bm = -INFINITY;
  for (int j = 0; j < v; ++j) bm = std::max(bm, s[j]);
  const float mn = std::max(m, bm), corr = std::exp(m - mn);
  for (int j = v; j < n; ++j) s[j] = 0.f;
  const __m256 vm = _mm256_set1_ps(mn);
  __m256 sum = _mm256_setzero_ps();
  int j = 0;
  for (; j + 8 <= v; j += 8) {
    const __m256 e = exp8(_mm256_sub_ps(_mm256_loadu_ps(s + j), vm));
    _mm256_storeu_ps(s + j, e);
    sum = _mm256_add_ps(sum, e);
  }
  float tail = 0.f;
  for (; j < v; ++j) tail += (s[j] = std::exp(s[j] - mn));
  if (corr != 1.f) {
    const __m256 vc = _mm256_set1_ps(corr);
    int c = 0;
    for (; c + 8 <= R; c += 8) _mm256_storeu_ps(acc + c, _mm256_mul_ps(_mm256_loadu_ps(acc + c), vc));
    for (; c < R; ++c) acc[c] *= corr;
  }
  l = l * corr + hsum(sum) + tail;
  m = mn;
}

void block_avx2(const float* q, int G, int K, const float* kv, int n, int R, const int* vis, float* m, float* l,
                float* acc, float* sbuf) {
  int g = 0;
  for (; g + 4 <= G; g += 4) dots_row_block<4>(q + int64_t(g) * K, K, kv, n, sbuf + g * kMlaBlock);
  for (; g < G; ++g) dots_row_block<1>(q + int64_t(g) * K, K, kv, n, sbuf + g * kMlaBlock);
  for (g = 0; g < G; ++g)
    if (vis[g] > 0) softmax_row(sbuf + g * kMlaBlock, vis[g], n, R, m[g], l[g], acc + int64_t(g) * R);
    else std::fill(sbuf + g * kMlaBlock, sbuf + g * kMlaBlock + n, 0.f);  // rows that see none: p = 0
  for (g = 0; g + 4 <= G; g += 4) {
    const int jn = std::max(std::max(vis[g], vis[g + 1]), std::max(vis[g + 2], vis[g + 3]));
    if (jn > 0) weigh<4>(sbuf + g * kMlaBlock, kv, jn, K, R, acc + int64_t(g) * R);
  }
  for (; g < G; ++g)
    if (vis[g] > 0) weigh<1>(sbuf + g * kMlaBlock, kv, vis[g], K, R, acc + int64_t(g) * R);
}

// cols: the weight is streamed once, row after row (a row is 2 KB for K2's R = 512): each row i adds
// x[t, i] * w[i] to every token's output row, which stays in L1 (T x O floats; 2 KB per token).
// 8 weights as fp32: fp32 loaded as they are, int8 widened (8 bytes -> 8 lanes)
inline __m256 load8(const float* w) { return _mm256_loadu_ps(w); }
inline __m256 load8(const int8_t* w) {
  return _mm256_cvtepi32_ps(_mm256_cvtepi8_epi32(_mm_loadl_epi64(reinterpret_cast<const __m128i*>(w))));
}

template <typename W>
void fold_cols_avx2(const float* x, int64_t ldx, int T, const W* w, int64_t ldw, int I, int O, float* y,
                    int64_t ldy) {
  const int O8 = O & ~7;
  for (int t = 0; t < T; ++t) std::fill(y + t * ldy, y + t * ldy + O, 0.f);
  for (int i = 0; i < I; ++i) {
    const W* wr = w + i * ldw;
    for (int t = 0; t < T; ++t) {
      const float xi = x[t * ldx + i];
      const __m256 b = _mm256_set1_ps(xi);
      float* yt = y + t * ldy;
      for (int o = 0; o < O8; o += 8)
        _mm256_storeu_ps(yt + o, _mm256_fmadd_ps(b, load8(wr + o), _mm256_loadu_ps(yt + o)));
      for (int o = O8; o < O; ++o) yt[o] += xi * float(wr[o]);
    }
  }
}

// rows: 4 weight rows at a time, each x load shared by 4 rows, two accumulators per row (FMA latency),
// one horizontal sum per row; the next 4 rows are prefetched while these stream. The 4 rows (8 KB for
// K2's R = 512 in fp32, 2 KB in int8) stay in L1 while the call's other tokens use them.
template <typename W>
void fold_rows_avx2(const float* x, int64_t ldx, int T, const W* w, int64_t ldw, int I, int O, float* y,
                    int64_t ldy) {
  const int I16 = I & ~15;
  int o = 0;
  for (; o + 4 <= O; o += 4) {
    const W* w0 = w + o * ldw;
    const bool ahead = o + 8 <= O;
    for (int t = 0; t < T; ++t) {
      const float* xt = x + t * ldx;
      __m256 a[4][2];
      for (int j = 0; j < 4; ++j) a[j][0] = a[j][1] = _mm256_setzero_ps();
      for (int i = 0; i < I16; i += 16) {
        const __m256 b0 = _mm256_loadu_ps(xt + i), b1 = _mm256_loadu_ps(xt + i + 8);
        for (int j = 0; j < 4; ++j) {
          const W* p = w0 + j * ldw + i;
          if (ahead && t == 0 && (i * int(sizeof(W))) % 64 == 0)
            _mm_prefetch(reinterpret_cast<const char*>(p + 4 * ldw), _MM_HINT_T0);
          a[j][0] = _mm256_fmadd_ps(b0, load8(p), a[j][0]);
          a[j][1] = _mm256_fmadd_ps(b1, load8(p + 8), a[j][1]);
        }
      }
      for (int j = 0; j < 4; ++j) {
        float r = hsum(_mm256_add_ps(a[j][0], a[j][1]));
        for (int i = I16; i < I; ++i) r += xt[i] * float(w0[j * ldw + i]);
        y[t * ldy + o + j] = r;
      }
    }
  }
  if (o < O) {  // the last rows by the scalar fold
    const MlaKernels* ref = mla_kernels_scalar();
    if constexpr (std::is_same_v<W, float>)
      ref->fold_rows(x, ldx, T, w + o * ldw, ldw, I, O - o, y + o, ldy);
    else
      ref->fold_rows_i8(x, ldx, T, w + o * ldw, ldw, I, O - o, y + o, ldy);
  }
}

const MlaKernels kAvx2{"avx2", block_avx2, fold_cols_avx2<float>, fold_rows_avx2<float>,
                       fold_cols_avx2<int8_t>, fold_rows_avx2<int8_t>};

}  // namespace

const MlaKernels* mla_kernels_avx2() { return &kAvx2; }

}  // namespace hk2
