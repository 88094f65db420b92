// Weight-only int8 linears of the device side run on the CPU (device=cpu): kernels and dispatch.
//
// [NOTE] Glossary: T tokens, I in features, O out features. The weight is the one `device-int8`
// stores (hybrid_k2/runtime/int8.py): q [O, I] int8 row-major, one fp32 scale per output row, and
//   y[t, o] = scale[o] * sum_k x[t, k] * q[o, k]        (x fp32, fp32 sums)
// which is what the GPU path computes in fp32, so its accuracy measurements carry over.
//   gemv  (decode, few tokens): a stream over the weight rows, each byte read once per call; a row
//         block stays in L1/L2 while the call's other tokens pass over it.
//   gemm  (prefill): blocks of rows are widened to fp32 once per K-slice into per-thread scratch and
//         multiplied by every token with a register tile.
// Both kernels cover rows [r0, r1) of y for all T tokens; the driver (int8_linear.cpp) splits the rows
// over the kernel thread pool, the same pool the routed experts run on.
#pragma once

#include <cstdint>

namespace hk2 {

// x: [T, ldx] fp32, q: [O, in] int8, scale: [O] fp32 -> y[t * ldy + r] for r in [r0, r1).
// scratch: per-thread, Int8LinearKernels::scratch_floats long (gemm only).
using Int8MatmulFn = void (*)(const float* x, int64_t ldx, int T, const int8_t* q, int64_t in, const float* scale,
                              int r0, int r1, float* y, int64_t ldy, float* scratch);

struct Int8LinearKernels {
  const char* name;
  Int8MatmulFn gemv, gemm;
  int gemm_rows;          // rows per gemm work item (the driver hands out multiples of it)
  int64_t scratch_floats; // per-thread scratch of gemm
};

const Int8LinearKernels* int8_kernels_scalar();
const Int8LinearKernels* int8_kernels_avx2();  // nullptr where this build has no AVX2 file

// y [T, O] fp32 = x [T, in] fp32 @ (q [O, in] int8 * scale [O])^T, on `threads` workers of the shared
// pool; gemm when T >= gemm_min_tokens. Blocks until done.
void int8_linear(const Int8LinearKernels& k, const float* x, int T, int64_t in, const int8_t* q, const float* scale,
                 int O, float* y, int threads, int gemm_min_tokens);

}  // namespace hk2
