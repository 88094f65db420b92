// [NOTE] Driver of the int8 linear: checks, picks gemv or gemm, and splits the output rows into work
// items handed out through an atomic counter: gemv items of `rows` rows (a multiple of 4, about 8 per
// thread so a slow core takes fewer), gemm items of the kernel's block.
// The items run through parallel_items (thread_pool.h): the calling thread works too and the shared
// kernel pool, the one the routed experts use, helps (no second pool, no oversubscription); a helper
// that is descheduled or busy with a routed job costs nothing (waking a sleeping worker took ~10 ms
// per call on a loaded machine).
#include <algorithm>
#include <vector>

#include "common.h"
#include "int8_linear/int8_linear.h"
#include "thread_pool.h"

namespace hk2 {

void int8_linear(const Int8LinearKernels& k, const float* x, int T, int64_t in, const int8_t* q, const float* scale,
                 int O, float* y, int threads, int gemm_min_tokens) {
  HK2_CHECK(T >= 0 && O >= 1 && in >= 1, "int8_linear: bad shape T=" << T << " O=" << O << " in=" << in);
  HK2_CHECK(threads >= 1, "threads must be >= 1, got " << threads);
  if (T == 0) return;
  const bool gemm = T >= std::max(1, gemm_min_tokens);
  const int rows = gemm ? k.gemm_rows : int(std::max<int64_t>(4, round_up(div_up(O, int64_t(threads) * 8), 4)));
  parallel_items(int(div_up(O, rows)), threads, [&](int it) {
    thread_local std::vector<float> scratch;
    if (gemm && int64_t(scratch.size()) < k.scratch_floats) scratch.resize(k.scratch_floats);
    const int r0 = it * rows, r1 = std::min(O, r0 + rows);
    (gemm ? k.gemm : k.gemv)(x, in, T, q, in, scale, r0, r1, y, O, scratch.data());
  });
}

}  // namespace hk2
