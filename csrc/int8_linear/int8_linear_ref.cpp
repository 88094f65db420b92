// [NOTE] Scalar reference of the int8 linear: the readable definition the AVX2 kernels are tested
// against, and the path of a CPU without AVX2 (or HYBRID_K2_ISA=scalar). One loop for both kernels:
//   y[t, r] = scale[r] * sum_k x[t, k] * q[r, k]   (fp32, k in order)
#include "common.h"
#include "int8_linear/int8_linear.h"

namespace hk2 {
namespace {

void matmul_ref(const float* x, int64_t ldx, int T, const int8_t* q, int64_t in, const float* scale, int r0, int r1,
                float* y, int64_t ldy, float*) {
  for (int t = 0; t < T; ++t)
    for (int r = r0; r < r1; ++r) {
      const int8_t* w = q + int64_t(r) * in;
      const float* xt = x + int64_t(t) * ldx;
      float acc = 0.f;
      for (int64_t k = 0; k < in; ++k) acc += xt[k] * float(w[k]);
      y[int64_t(t) * ldy + r] = scale[r] * acc;
    }
}

const Int8LinearKernels kScalar{"scalar", matmul_ref, matmul_ref, 16, 0};

}  // namespace

const Int8LinearKernels* int8_kernels_scalar() { return &kScalar; }

}  // namespace hk2

#if !(defined(__x86_64__) || defined(__i386__))
namespace hk2 {
const Int8LinearKernels* int8_kernels_avx2() { return nullptr; }  // the AVX2 file is x86-only
}  // namespace hk2
#endif
