// [NOTE] Driver of the int8 linear: checks, picks gemv or gemm, and splits the output rows into work
// items handed out through an atomic counter: gemv items of `rows` rows (a multiple of 4, about 8 per
// thread so a slow core takes fewer), gemm items of the kernel's block.
// The calling thread works too, and the shared kernel pool (thread_pool.h, the pool the routed
// experts use: no second pool, no oversubscription by pool threads) is asked to help; the call
// returns when every item is done, not when every helper has run. So a helper that is descheduled
// (a loaded machine: waking a sleeping worker took ~10 ms per call there) or still busy with a routed
// job (FIFO pool) costs nothing: it wakes later, finds no item and leaves. The job's state is shared
// (shared_ptr), so a late helper never touches the caller's stack. The caller sleeps on a condition
// variable after a short yield-spin if helpers still hold items.
#include <algorithm>
#include <atomic>
#include <chrono>
#include <condition_variable>
#include <memory>
#include <mutex>
#include <thread>
#include <vector>

#include "common.h"
#include "int8_linear/int8_linear.h"
#include "thread_pool.h"

namespace hk2 {
namespace {

struct Int8Job {
  const Int8LinearKernels* k;
  const float* x;
  int T;
  int64_t in;
  const int8_t* q;
  const float* scale;
  int O;
  float* y;
  bool gemm;
  int rows, items;
  std::atomic<int> next{0}, done{0};
  std::mutex mu;
  std::condition_variable cv;
};

void run_items(Int8Job& j) {
  thread_local std::vector<float> scratch;
  for (int it = j.next.fetch_add(1); it < j.items; it = j.next.fetch_add(1)) {
    if (j.gemm && int64_t(scratch.size()) < j.k->scratch_floats) scratch.resize(j.k->scratch_floats);
    const int r0 = it * j.rows, r1 = std::min(j.O, r0 + j.rows);
    (j.gemm ? j.k->gemm : j.k->gemv)(j.x, j.in, j.T, j.q, j.in, j.scale, r0, r1, j.y, j.O, scratch.data());
    if (j.done.fetch_add(1, std::memory_order_acq_rel) + 1 == j.items) {
      std::lock_guard<std::mutex> lk(j.mu);
      j.cv.notify_all();
    }
  }
}

}  // namespace

void int8_linear(const Int8LinearKernels& k, const float* x, int T, int64_t in, const int8_t* q, const float* scale,
                 int O, float* y, int threads, int gemm_min_tokens) {
  HK2_CHECK(T >= 0 && O >= 1 && in >= 1, "int8_linear: bad shape T=" << T << " O=" << O << " in=" << in);
  HK2_CHECK(threads >= 1, "threads must be >= 1, got " << threads);
  if (T == 0) return;
  auto job = std::make_shared<Int8Job>();
  job->k = &k;
  job->x = x;
  job->T = T;
  job->in = in;
  job->q = q;
  job->scale = scale;
  job->O = O;
  job->y = y;
  job->gemm = T >= std::max(1, gemm_min_tokens);
  job->rows = job->gemm ? k.gemm_rows : int(std::max<int64_t>(4, round_up(div_up(O, int64_t(threads) * 8), 4)));
  job->items = int(div_up(O, job->rows));
  if (threads > 1 && job->items > 1) global_pool(threads).submit([job](int, int) { run_items(*job); });
  run_items(*job);
  auto finished = [&] { return job->done.load(std::memory_order_acquire) == job->items; };
  const auto end = std::chrono::steady_clock::now() + std::chrono::microseconds(50);
  while (!finished() && std::chrono::steady_clock::now() < end) std::this_thread::yield();
  if (!finished()) {
    std::unique_lock<std::mutex> lk(job->mu);
    job->cv.wait(lk, finished);
  }
}

}  // namespace hk2
