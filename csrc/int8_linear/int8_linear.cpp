// [NOTE] Driver of the int8 linear: checks, picks gemv or gemm, and splits the output rows over the
// shared kernel pool (thread_pool.h), the pool the routed experts use, so the device side and the
// experts never hold more threads than there are cores. Work items are handed out through an atomic
// counter: gemv items of `rows` rows (a multiple of 4, about 8 items per thread so a slow core takes
// fewer), gemm items of the kernel's block. The call blocks until the job is done; the caller's thread
// sleeps in the pool's wait (after a short yield-spin), it does not compete for a core.
#include <algorithm>
#include <atomic>
#include <memory>
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
  const bool use_gemm = T >= std::max(1, gemm_min_tokens);
  const int rows = use_gemm ? k.gemm_rows
                            : int(std::max<int64_t>(4, round_up(div_up(O, int64_t(threads) * 8), 4)));
  const int items = int(div_up(O, rows));
  const int n = std::min(threads, items);
  auto next = std::make_shared<std::atomic<int>>(0);
  auto body = [&, next, use_gemm, rows, items](int, int) {
    thread_local std::vector<float> scratch;
    if (use_gemm && int64_t(scratch.size()) < k.scratch_floats) scratch.resize(k.scratch_floats);
    for (int it = next->fetch_add(1); it < items; it = next->fetch_add(1)) {
      const int r0 = it * rows, r1 = std::min(O, r0 + rows);
      (use_gemm ? k.gemm : k.gemv)(x, in, T, q, in, scale, r0, r1, y, O, scratch.data());
    }
  };
  if (n == 1 && threads == 1) {  // one thread: no pool round trip
    body(0, 1);
    return;
  }
  ThreadPool& pool = global_pool(threads);
  pool.wait(pool.submit(body));
}

}  // namespace hk2
