// [NOTE] Driver of the fused routed-MoE op; the math lives in the per-ISA kernel tables.
//
// Plan (calling thread): validate, sort the T*K (token, expert) pairs ("slots") by expert with a
// counting sort, size one scratch arena. Run (all pool workers, three phases split by barriers):
//   0. activations: each token row to fp32, then to the ISA's k-order (exact) or q8 (fast);
//   1. for every (expert, block of 128 intermediate rows): g = gate x, u = up x for the expert's
//      tokens, h = silu(g) * u, stored per slot already in k-order / q8 for phase 2;
//   2. for every block of 64 hidden rows: out[t, rows] = sum over experts of w * (down h)[rows],
//      experts in ascending order, so each output element has one writer and a fixed summation
//      order (results do not depend on the thread count).
// Tasks are taken from atomic counters, so 2..N threads share every expert (T = 1 included).
// An expert with fewer than kern->gemm_min_tokens[fast] tokens uses the GEMV kernels (stream the weights
// once, all its tokens per row block), otherwise the GEMM kernels (unpack a weight block once,
// reuse it across token tiles). Tokens of one expert go through in chunks of kTokenChunk to bound
// the scratch.
#include "int4_moe/moe.h"

#include <algorithm>
#include <atomic>
#include <cstdlib>
#include <exception>
#include <mutex>
#include <vector>

#include "common.h"

namespace hk2 {
namespace {

constexpr int kRows1 = 128;       // intermediate rows per phase-1 task (multiple of 32 * P, P <= 4)
constexpr int kRows2 = 64;        // hidden rows per phase-2 task
constexpr int kTokenChunk = 256;  // tokens of one expert per matmul call

// A small cache of 64-byte aligned buffers so that a call does not page-fault fresh memory.
class BufferCache {
 public:
  static BufferCache& get() {
    static auto* c = new BufferCache();
    return *c;
  }
  uint8_t* acquire(int64_t bytes, int64_t* got) {
    std::lock_guard<std::mutex> lk(mu_);
    for (size_t i = 0; i < free_.size(); ++i)
      if (free_[i].first >= bytes) {
        auto b = free_[i];
        free_.erase(free_.begin() + long(i));
        *got = b.first;
        return b.second;
      }
    void* p = nullptr;
    HK2_CHECK(posix_memalign(&p, 64, size_t(bytes)) == 0, "cannot allocate " << bytes << " bytes of scratch");
    *got = bytes;
    return static_cast<uint8_t*>(p);
  }
  void release(uint8_t* p, int64_t bytes) {
    std::lock_guard<std::mutex> lk(mu_);
    free_.emplace_back(bytes, p);
    if (free_.size() > 4) {  // keep the largest few
      auto smallest = std::min_element(free_.begin(), free_.end());
      std::free(smallest->second);
      free_.erase(smallest);
    }
  }

 private:
  std::mutex mu_;
  std::vector<std::pair<int64_t, uint8_t*>> free_;
};

struct ExpertRun {
  int e, first, count;  // slots [first, first + count) of the sorted order
};

// Activation rows of one matrix input in the k-order of the kernels.
struct ActBuf {
  float* f32 = nullptr;
  int8_t* q8 = nullptr;
  float* d4 = nullptr;
  int32_t* c4 = nullptr;
  float* e = nullptr;
  float* d = nullptr;
  int64_t ld = 0;
  Acts view() const { return {f32, q8, d4, c4, e, d, ld}; }
  void fill(const MoeKernels& k, bool fast, int64_t row, int64_t c0, const float* src, int n) const {
    if (fast && k.prepare_fast_f32)
      k.prepare_fast_f32(src, n, f32 + row * ld + c0);
    else if (fast)
      k.quantize_row(src, n, q8 + row * ld + c0, d4 + row * (ld / 8) + c0 / 8,
                     c4 + row * (ld / 8) + c0 / 8, e + row * (ld / 32) + c0 / 32, d + row * (ld / 32) + c0 / 32);
    else
      k.permute_row(src, n, f32 + row * ld + c0);
  }
};

}  // namespace

class MoeJob {
 public:
  MoeCall call;
  int D, I, nthreads;
  std::vector<int32_t> slot_tok;   // [T*K] token of each slot, sorted by expert
  std::vector<float> slot_w;       // [T*K]
  std::vector<ExpertRun> runs;     // experts with at least one token, ascending
  int n_tasks1 = 0;
  std::atomic<int> next1{0}, next2{0};
  std::atomic<bool> failed{false};  // a worker threw: the others skip the work but still meet at barriers
  std::exception_ptr error;
  std::mutex error_mu;
  // scratch arena
  uint8_t* arena = nullptr;
  int64_t arena_bytes = 0;
  ActBuf xa, ha;                   // [T, D] and [T*K, I]
  uint8_t* per_thread = nullptr;
  int64_t per_thread_bytes = 0;

  ~MoeJob() {
    if (arena) BufferCache::get().release(arena, arena_bytes);
  }
};

namespace {

// Lays out an ActBuf of [rows, n] at *off inside the arena (or only counts when base is null).
ActBuf carve(uint8_t* base, int64_t* off, int64_t rows, int64_t n, bool q8) {
  ActBuf b;
  b.ld = n;
  auto take = [&](int64_t bytes) {
    uint8_t* p = base ? base + *off : nullptr;
    *off = round_up(*off + bytes, 64);
    return p;
  };
  if (q8) {
    b.q8 = reinterpret_cast<int8_t*>(take(rows * n));
    b.d4 = reinterpret_cast<float*>(take(rows * (n / 8) * 4));
    b.c4 = reinterpret_cast<int32_t*>(take(rows * (n / 8) * 4));
    b.e = reinterpret_cast<float*>(take(rows * (n / 32) * 4));
    b.d = reinterpret_cast<float*>(take(rows * (n / 32) * 4));
  } else {
    b.f32 = reinterpret_cast<float*>(take(rows * n * 4));
  }
  return b;
}

int64_t expert_id(const MoeCall& c, int64_t i) {
  return c.ids_i64 ? static_cast<const int64_t*>(c.ids)[i] : static_cast<const int32_t*>(c.ids)[i];
}

}  // namespace

std::shared_ptr<MoeJob> plan_moe(const MoeCall& c, int nthreads) {
  const ExpertStore& X = *c.experts;
  HK2_CHECK(c.T >= 0 && c.K >= 1, "need T >= 0 tokens and K >= 1 experts per token");
  auto job = std::make_shared<MoeJob>();
  job->call = c;
  job->D = X.hidden();
  job->I = X.intermediate();
  job->nthreads = nthreads;
  const int64_t n = int64_t(c.T) * c.K;
  const int E = X.num_experts();
  std::vector<int32_t> ids(n);
  std::vector<int> count(E + 1, 0);
  for (int64_t i = 0; i < n; ++i) {
    const int64_t e = expert_id(c, i);
    HK2_CHECK(e >= 0 && e < E, "expert id " << e << " at [" << i / c.K << ", " << i % c.K
                                            << "] is out of range [0, " << E << ")");
    ids[i] = int32_t(e);
    ++count[e + 1];
  }
  for (int e = 0; e < E; ++e) {
    if (count[e + 1] > 0) {
      HK2_CHECK(X.loaded(e), "expert " << e << " is routed to but was never loaded");
      job->runs.push_back({e, count[e], count[e + 1]});
    }
    count[e + 1] += count[e];
  }
  job->slot_tok.resize(n);
  job->slot_w.resize(n);
  for (int64_t i = 0; i < n; ++i) {  // stable: slots of one expert stay in token order
    const int s = count[ids[i]]++;
    job->slot_tok[s] = int32_t(i / c.K);
    job->slot_w[s] = c.weights[i];
  }
  job->n_tasks1 = int(job->runs.size() * div_up(job->I, kRows1));

  // Scratch: activations, h, then per thread: fp32 row, g/u/y tiles, kernel scratch.
  const int64_t tile = int64_t(kTokenChunk) * std::max(kRows1, kRows2) * 4;
  job->per_thread_bytes = round_up(int64_t(std::max(job->D, job->I)) * 4, 64) + 3 * tile + kScratchBytes;
  int64_t off = 0;
  const bool q8 = c.fast && !c.kern->prepare_fast_f32;
  carve(nullptr, &off, c.T, job->D, q8);
  carve(nullptr, &off, n, job->I, q8);
  const int64_t per_thread_at = off;
  off += job->per_thread_bytes * nthreads;
  job->arena = BufferCache::get().acquire(off, &job->arena_bytes);
  off = 0;
  job->xa = carve(job->arena, &off, c.T, job->D, q8);
  job->ha = carve(job->arena, &off, n, job->I, q8);
  job->per_thread = job->arena + per_thread_at;
  return job;
}

namespace {

// Runs one phase of a worker; an exception is kept for the caller instead of leaving the other
// workers waiting forever at the next barrier.
template <class F>
void guarded(MoeJob& job, F body) {
  if (job.failed.load(std::memory_order_relaxed)) return;
  try {
    body();
  } catch (...) {
    std::lock_guard<std::mutex> lk(job.error_mu);
    if (!job.error) job.error = std::current_exception();
    job.failed.store(true);
  }
}

}  // namespace

void run_moe(MoeJob& job, ThreadPool& pool, int tid, int nthreads) {
  const MoeCall& c = job.call;
  const MoeKernels& k = *c.kern;
  const ExpertStore& X = *c.experts;
  const int D = job.D, I = job.I;
  uint8_t* mine = job.per_thread + job.per_thread_bytes * tid;
  float* row = reinterpret_cast<float*>(mine);
  const int64_t tile_floats = int64_t(kTokenChunk) * std::max(kRows1, kRows2);
  float* g = reinterpret_cast<float*>(mine + round_up(int64_t(std::max(D, I)) * 4, 64));
  float* u = g + tile_floats;
  float* y = u + tile_floats;
  uint8_t* scratch = reinterpret_cast<uint8_t*>(y + tile_floats);

  // Phase 0: x -> k-order / q8.
  guarded(job, [&] {
    for (int t = tid; t < c.T; t += nthreads) {
      const float* src;
      if (c.x_bf16) {
        const uint16_t* xb = static_cast<const uint16_t*>(c.x) + int64_t(t) * D;
        for (int i = 0; i < D; ++i) row[i] = bf16_to_f32(xb[i]);
        src = row;
      } else {
        src = static_cast<const float*>(c.x) + int64_t(t) * D;
      }
      job.xa.fill(k, c.fast, t, 0, src, D);
    }
  });
  pool.barrier();

  // Phase 1: h = silu(gate x) * up x, per (expert, row block).
  const Acts xa = job.xa.view();
  const int blocks1 = int(div_up(I, kRows1));
  guarded(job, [&] {
    for (int task; (task = job.next1.fetch_add(1, std::memory_order_relaxed)) < job.n_tasks1;) {
      const ExpertRun& run = job.runs[task / blocks1];
      const int r0 = (task % blocks1) * kRows1, r1 = std::min(I, r0 + kRows1), nr = r1 - r0;
      const Int4Matrix wg = X.gate(run.e), wu = X.up(run.e);
      const bool gemm = run.count >= k.gemm_min_tokens[c.fast];
      const MatmulFn mm = c.fast ? (gemm ? k.gemm_fast : k.gemv_fast) : (gemm ? k.gemm_exact : k.gemv_exact);
      for (int m0 = 0; m0 < run.count; m0 += kTokenChunk) {
        const int M = std::min(kTokenChunk, run.count - m0);
        const int32_t* toks = job.slot_tok.data() + run.first + m0;
        mm(wg, r0, r1, xa, toks, M, g, nr, scratch);
        mm(wu, r0, r1, xa, toks, M, u, nr, scratch);
        for (int m = 0; m < M; ++m) {
          k.swiglu(g + int64_t(m) * nr, u + int64_t(m) * nr, nr, row);
          job.ha.fill(k, c.fast, run.first + m0 + m, r0, row, nr);
        }
      }
    }
  });
  pool.barrier();

  // Phase 2: out[:, rows] = sum_e w * down_e h, one writer per output block.
  const Acts ha = job.ha.view();
  const int blocks2 = int(div_up(D, kRows2));
  guarded(job, [&] {
    std::vector<int32_t> slots(kTokenChunk);
    for (int task; (task = job.next2.fetch_add(1, std::memory_order_relaxed)) < blocks2;) {
      const int r0 = task * kRows2, r1 = std::min(D, r0 + kRows2), nr = r1 - r0;
      for (int t = 0; t < c.T; ++t) std::memset(c.out + int64_t(t) * D + r0, 0, sizeof(float) * nr);
      for (const ExpertRun& run : job.runs) {
        const Int4Matrix wd = X.down(run.e);
        const bool gemm = run.count >= k.gemm_min_tokens[c.fast];
        const MatmulFn mm = c.fast ? (gemm ? k.gemm_fast : k.gemv_fast) : (gemm ? k.gemm_exact : k.gemv_exact);
        for (int m0 = 0; m0 < run.count; m0 += kTokenChunk) {
          const int M = std::min(kTokenChunk, run.count - m0);
          for (int m = 0; m < M; ++m) slots[m] = run.first + m0 + m;
          mm(wd, r0, r1, ha, slots.data(), M, y, nr, scratch);
          for (int m = 0; m < M; ++m) {
            const float w = job.slot_w[run.first + m0 + m];
            float* o = c.out + int64_t(job.slot_tok[run.first + m0 + m]) * D + r0;
            const float* ym = y + int64_t(m) * nr;
            for (int i = 0; i < nr; ++i) o[i] += w * ym[i];
          }
        }
      }
    }
  });
  pool.barrier();
  if (tid == 0 && job.error) std::rethrow_exception(job.error);  // reported by ThreadPool::wait
}

}  // namespace hk2
