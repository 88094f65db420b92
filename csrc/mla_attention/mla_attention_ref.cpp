// [NOTE] Scalar kernels of the absorbed MLA attention (block step and folds): the readable definition the
// AVX2 kernels are tested against, and the path of a CPU without AVX2 (or HYBRID_K2_ISA=scalar). The block
// step, for each query row:
//   s_j = q . kv_j (j < vis),  m' = max(m, max_j s_j),  p_j = e^(s_j - m'),
//   l' = l e^(m - m') + sum_j p_j,  acc' = acc e^(m - m') + sum_j p_j kv_j[:R]
#include <algorithm>
#include <cmath>

#include "common.h"
#include "mla_attention/mla_attention.h"

namespace hk2 {
namespace {

void block_ref(const float* q, int G, int K, const float* kv, int n, int R, const int* vis, float* m, float* l,
               float* acc, float* sbuf) {
  (void)n;
  for (int g = 0; g < G; ++g) {
    const int v = vis[g];
    if (v == 0) continue;
    const float* qg = q + int64_t(g) * K;
    float* s = sbuf + int64_t(g) * kMlaBlock;
    float bm = -INFINITY;
    for (int j = 0; j < v; ++j) {
      float d = 0.f;
      for (int k = 0; k < K; ++k) d += qg[k] * kv[int64_t(j) * K + k];
      s[j] = d;
      bm = std::max(bm, d);
    }
    const float mn = std::max(m[g], bm), corr = std::exp(m[g] - mn);
    float* a = acc + int64_t(g) * R;
    for (int c = 0; c < R; ++c) a[c] *= corr;
    float sum = 0.f;
    for (int j = 0; j < v; ++j) {
      const float p = std::exp(s[j] - mn);
      sum += p;
      for (int c = 0; c < R; ++c) a[c] += p * kv[int64_t(j) * K + c];
    }
    l[g] = l[g] * corr + sum;
    m[g] = mn;
  }
}

// y[t, o] = sum_i x[t, i] W(i, o), W(i, o) = w[i ldw + o] (cols) or w[o ldw + i] (rows); W fp32 or int8.
template <bool kCols, typename W>
void fold_ref(const float* x, int64_t ldx, int T, const W* w, int64_t ldw, int I, int O, float* y, int64_t ldy) {
  for (int t = 0; t < T; ++t)
    for (int o = 0; o < O; ++o) {
      float acc = 0.f;
      for (int i = 0; i < I; ++i) acc += x[t * ldx + i] * float(kCols ? w[i * ldw + o] : w[o * ldw + i]);
      y[t * ldy + o] = acc;
    }
}

const MlaKernels kScalar{"scalar", block_ref, fold_ref<true, float>, fold_ref<false, float>,
                         fold_ref<true, int8_t>, fold_ref<false, int8_t>};

}  // namespace

const MlaKernels* mla_kernels_scalar() { return &kScalar; }

}  // namespace hk2

#if !(defined(__x86_64__) || defined(__i386__))
namespace hk2 {
const MlaKernels* mla_kernels_avx2() { return nullptr; }  // the AVX2 file is x86-only
}  // namespace hk2
#endif
