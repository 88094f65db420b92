// [NOTE] Scalar reference of the INT4 MoE matmuls: the readable definition the SIMD paths are tested
// against, and the path of a CPU without AVX2. Natural column order (k-order P = 0):
//   exact: y[r] = sum_g scale[r,g] * sum_{k in g} (u[r,k] - 8) * x[k]          (fp32)
//   fast:  y[r] = sum_g scale[r,g] * d[g] * sum_{k in g} (u[r,k] - 8) * q[k]   (int32 inner sums)
// where x ~ d[g] * q[k] is the q8 quantisation of the activations (int4_moe_generic.inl).
#include <algorithm>
#include <cmath>

#include "common.h"
#include "int4_moe/int4_moe.h"

namespace hk2 {
namespace {

#include "int4_moe/int4_moe_generic.inl"

inline int weight_q(const Int4Matrix& w, int r, int k) {
  const uint8_t b = w.packed[int64_t(r) * (w.cols / 2) + k / 2];
  return ((k & 1) ? (b >> 4) : (b & 15)) - 8;
}

void matmul_exact(const Int4Matrix& w, int r0, int r1, const Acts& a, const int32_t* idx, int M,
                  float* y, int ldy, uint8_t*) {
  const int G = w.cols / 32;
  for (int m = 0; m < M; ++m) {
    const float* x = a.f32 + int64_t(idx[m]) * a.ld;
    for (int r = r0; r < r1; ++r) {
      float acc = 0.f;
      for (int g = 0; g < G; ++g) {
        float dot = 0.f;
        for (int k = 32 * g; k < 32 * g + 32; ++k) dot += float(weight_q(w, r, k)) * x[k];
        acc += bf16_to_f32(w.scale[int64_t(r) * G + g]) * dot;
      }
      y[int64_t(m) * ldy + (r - r0)] = acc;
    }
  }
}

void matmul_fast(const Int4Matrix& w, int r0, int r1, const Acts& a, const int32_t* idx, int M,
                 float* y, int ldy, uint8_t*) {
  const int G = w.cols / 32;
  for (int m = 0; m < M; ++m) {
    const int8_t* q = a.q8 + int64_t(idx[m]) * a.ld;
    const float* d4 = a.d4 + int64_t(idx[m]) * (a.ld / 8);
    for (int r = r0; r < r1; ++r) {
      float acc = 0.f;
      for (int g = 0; g < G; ++g) {
        int32_t dot = 0;
        for (int k = 32 * g; k < 32 * g + 32; ++k) dot += weight_q(w, r, k) * q[k];
        acc += bf16_to_f32(w.scale[int64_t(r) * G + g]) * d4[4 * g] * float(dot);
      }
      y[int64_t(m) * ldy + (r - r0)] = acc;
    }
  }
}

const MoeKernels kScalar = {
    "scalar", /*P=*/0, /*gemm_min_tokens=*/{1 << 30, 1 << 30},
    permute_row_t<0>, quantize_row_t<0>, swiglu_t,
    matmul_exact, matmul_exact, matmul_fast, matmul_fast,
};

}  // namespace

const MoeKernels* kernels_scalar() { return &kScalar; }

#if !(defined(__x86_64__) || defined(__i386__))
// setup.py builds no ISA file off x86: the dispatcher then only offers "scalar".
const MoeKernels* kernels_avx2() { return nullptr; }
const MoeKernels* kernels_avx512() { return nullptr; }
const MoeKernels* kernels_avx512_vnni() { return nullptr; }
const MoeKernels* kernels_avx512bf16() { return nullptr; }
const MoeKernels* kernels_amx() { return nullptr; }
#endif

}  // namespace hk2
