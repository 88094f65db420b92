// Where the GEMM kernels start to beat the GEMV ones (MoeKernels::gemm_min_tokens): one expert's
// gate matrices (8 x [2048, 7168], 58 MB, so the weights come from RAM) times M tokens, single
// thread, CPU time, best of 3. Built and run by `python csrc/tests/build.py switch` (AVX2 kernels).
#include <algorithm>
#include <cstdio>
#include <cstdlib>
#include <ctime>
#include <vector>

#include "int4_moe/int4_moe.h"

using namespace hk2;
static double cpu_now() { timespec ts; clock_gettime(CLOCK_THREAD_CPUTIME_ID, &ts); return ts.tv_sec + ts.tv_nsec * 1e-9; }
int main(int argc, char** argv) {
  const int D = 7168, R = 2048 * 8;  // 8 gate matrices, 58 MB: from RAM
  const bool exact = argc > 1 && argv[1][0] == 'e';
  std::vector<uint8_t> packed(size_t(R) * D / 2);
  for (size_t i = 0; i < packed.size(); ++i) packed[i] = uint8_t(i * 2654435761u >> 13);
  std::vector<uint16_t> scale(size_t(R) * D / 32, 0x3c00);
  const int MT = 32;
  std::vector<float> x(D * MT), xf(D * MT);
  for (int i = 0; i < D * MT; ++i) x[i] = float((i * 37) % 17) - 8.f;
  std::vector<int8_t> q(D * MT); std::vector<float> d4(D / 8 * MT), e(D / 32 * MT), dg(D / 32 * MT); std::vector<int32_t> c4(D / 8 * MT);
  const MoeKernels* k = kernels_avx2();
  for (int m = 0; m < MT; ++m) {
    k->quantize_row(x.data() + m * D, D, q.data() + m * D, d4.data() + m * D / 8, c4.data() + m * D / 8, e.data() + m * D / 32, dg.data() + m * D / 32);
    k->permute_row(x.data() + m * D, D, xf.data() + m * D);
  }
  Acts a{xf.data(), q.data(), d4.data(), c4.data(), e.data(), dg.data(), D};
  Int4Matrix w{packed.data(), scale.data(), R, D};
  std::vector<int32_t> idx(MT); for (int i = 0; i < MT; ++i) idx[i] = i;
  std::vector<float> y(size_t(R) * MT);
  uint8_t* scratch = static_cast<uint8_t*>(aligned_alloc(64, kScratchBytes));
  for (int M : {1, 2, 3, 4, 6, 8, 12, 16, 24, 32}) {
    double best[2] = {1e9, 1e9};
    for (int rep = 0; rep < 3; ++rep)
      for (int which = 0; which < 2; ++which) {
        MatmulFn f = exact ? (which ? k->gemm_exact : k->gemv_exact) : (which ? k->gemm_fast : k->gemv_fast);
        double t0 = cpu_now();
        for (int r = 0; r < R; r += 128) f(w, r, r + 128, a, idx.data(), M, y.data() + size_t(r) * M, 128, scratch);
        best[which] = std::min(best[which], cpu_now() - t0);
      }
    printf("%s M=%2d gemv %.1f ms gemm %.1f ms  ratio gemv/gemm %.2f\n", exact ? "exact" : "fast", M, best[0] * 1e3,
           best[1] * 1e3, best[0] / best[1]);
  }
  free(scratch);
}
