// [NOTE] Scalar block step of the absorbed MLA attention: the readable definition the AVX2 kernel is
// tested against, and the path of a CPU without AVX2 (or HYBRID_K2_ISA=scalar). For each query row:
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

const MlaKernels kScalar{"scalar", block_ref};

}  // namespace

const MlaKernels* mla_kernels_scalar() { return &kScalar; }

}  // namespace hk2

#if !(defined(__x86_64__) || defined(__i386__))
namespace hk2 {
const MlaKernels* mla_kernels_avx2() { return nullptr; }  // the AVX2 file is x86-only
}  // namespace hk2
#endif
