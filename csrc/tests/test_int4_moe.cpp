// Sanitizer (ASan + UBSan) test of the INT4 MoE kernels, built by csrc/tests/build.py ("asan"):
// every ISA table (AVX-512, AVX-512-BF16 and AMX emulated via SIMDe + tests/emu/amx_emu.h) runs the
// fused op through the real driver and thread pool on odd shapes and is compared with the scalar
// reference table; bad input must throw hk2::Error. Prints "N passed, M failed".
#include <atomic>
#include <chrono>
#include <cmath>
#include <thread>
#include <cstdio>
#include <random>
#include <string>
#include <vector>

#include "common.h"
#include "cpu_features.h"
#include "int4_moe/moe.h"
#include "int4_moe/packed_experts.h"
#include "thread_pool.h"

using namespace hk2;

namespace {

int passed = 0, failed = 0;

void expect(bool ok, const std::string& what) {
  if (ok) {
    ++passed;
  } else {
    ++failed;
    std::printf("FAILED: %s\n", what.c_str());
  }
}

void fill_store(ExpertStore& s, std::mt19937& rng) {
  const int D = s.hidden(), I = s.intermediate();
  std::uniform_int_distribution<int> byte(0, 255);
  std::uniform_real_distribution<float> scale(0.005f, 0.025f);
  for (int e = 0; e < s.num_experts(); ++e) {
    auto bytes = [&](int64_t n) {
      std::vector<uint8_t> v(n);
      for (auto& b : v) b = e == 0 ? 0x00 : e == 1 ? 0xff : uint8_t(byte(rng));  // experts 0, 1: q = -8, q = 7
      return v;
    };
    auto scales = [&](int64_t n) {
      std::vector<uint16_t> v(n);
      for (auto& h : v) h = f32_to_bf16(scale(rng));
      return v;
    };
    const auto gp = bytes(int64_t(I) * D / 2), up = bytes(int64_t(I) * D / 2), dp = bytes(int64_t(D) * I / 2);
    const auto gs = scales(int64_t(I) * D / 32), us = scales(int64_t(I) * D / 32), ds = scales(int64_t(D) * I / 32);
    s.load_expert(e, gp.data(), gs.data(), up.data(), us.data(), dp.data(), ds.data());
  }
}

std::vector<float> run(const ExpertStore& s, const MoeKernels* k, bool fast, int T, int K, const std::vector<float>& x,
                       const std::vector<int32_t>& ids, const std::vector<float>& w, int threads) {
  std::vector<float> out(size_t(T) * s.hidden(), NAN);
  MoeCall c{&s, x.data(), false, T, ids.data(), false, K, w.data(), out.data(), fast, k};
  auto job = plan_moe(c, threads);
  ThreadPool& pool = global_pool(threads);
  pool.wait(pool.submit([&](int tid, int n) { run_moe(*job, pool, tid, n); }));
  return out;
}

double rel_err(const std::vector<float>& a, const std::vector<float>& b) {
  double num = 0, den = 1e-30;
  for (size_t i = 0; i < a.size(); ++i) {
    if (!std::isfinite(a[i])) return INFINITY;
    num = std::max(num, double(std::fabs(a[i] - b[i])));
    den = std::max(den, double(std::fabs(b[i])));
  }
  return num / den;
}

}  // namespace

int main() {
  std::mt19937 rng(7);
  struct Table {
    const char* isa;
    const MoeKernels* k;
  };
  std::vector<Table> tables = {{"avx2", kernels_avx2()}, {"avx512", kernels_avx512()},
                               {"avx512vnni", kernels_avx512_vnni()}, {"avx512bf16", kernels_avx512bf16()},
                               {"amx", kernels_amx()}};
  const int shapes[2][3] = {{6, 96, 352}, {5, 224, 160}};  // E, D, I: 3/7 and 11/5 groups
  for (const auto& sh : shapes) {
    ExpertStore store(sh[0], sh[1], sh[2], kLayoutCt);
    fill_store(store, rng);
    for (int T : {1, 2, 7, 64, 130})
      for (int K : {1, 4, 8}) {
        if (sh[1] == 224 && (K != 8 || T == 2 || T == 130)) continue;  // second shape: a few cases
        std::vector<float> x(size_t(T) * sh[1]), w(size_t(T) * K);
        std::vector<int32_t> ids(size_t(T) * K);
        std::normal_distribution<float> nd(0.f, 2.f);
        for (auto& v : x) v = nd(rng);
        for (int t = 0; t < T; ++t)
          for (int j = 0; j < K; ++j) {
            ids[t * K + j] = (t == 1) ? 3 % sh[0] : int((t * 7 + j * 5 + j * j) % sh[0]);  // token 1 repeats one id
            w[t * K + j] = t == 2 ? 0.f : 0.1f + 0.3f * float(j);
          }
        const auto ref_exact = run(store, kernels_scalar(), false, T, K, x, ids, w, 2);
        const auto ref_fast = run(store, kernels_scalar(), true, T, K, x, ids, w, 1);
        for (const Table& tb : tables) {
          if (!isa_unavailable_reason(tb.isa).empty()) continue;
          const std::string tag = std::string(tb.isa) + " D=" + std::to_string(sh[1]) + " T=" + std::to_string(T) +
                                  " K=" + std::to_string(K);
          const double e_exact = rel_err(run(store, tb.k, false, T, K, x, ids, w, 2), ref_exact);
          expect(e_exact < 1e-5, tag + " exact: " + std::to_string(e_exact));
          const auto fast = run(store, tb.k, true, T, K, x, ids, w, 2);
          const bool bf16 = tb.k->prepare_fast_f32 != nullptr;
          const double e_fast = bf16 ? rel_err(fast, ref_exact) : rel_err(fast, ref_fast);
          // bf16 activations vs exact: the same bound as q8 vs exact in tests/test_kernels_moe.py
          expect(e_fast < (bf16 ? 4e-2 : 2e-3), tag + " fast: " + std::to_string(e_fast));
        }
      }
  }
  // Bad input throws hk2::Error (never crashes).
  ExpertStore small(2, 32, 32, kLayoutCt);
  fill_store(small, rng);
  std::vector<float> x(32, 1.f), w(1, 1.f), out(32);
  std::vector<int32_t> bad = {2};
  bool threw = false;
  try {
    MoeCall c{&small, x.data(), false, 1, bad.data(), false, 1, w.data(), out.data(), false, kernels_scalar()};
    plan_moe(c, 1);
  } catch (const Error&) {
    threw = true;
  }
  expect(threw, "out-of-range expert id throws");
  threw = false;
  try {
    ExpertStore odd(1, 48, 32, kLayoutCt);
  } catch (const Error&) {
    threw = true;
  }
  expect(threw, "hidden not a multiple of 32 throws");
  // The shared pool: a job that skips a worker ends without it, whole-pool jobs with barriers still run
  // after it, and parallel_items runs every item once whatever the pool is doing.
  {
    ThreadPool& pool = global_pool(2);
    std::atomic<int> ran0{0}, ran1{0};
    pool.wait(pool.submit([&](int tid, int) { (tid == 0 ? ran0 : ran1)++; }, /*skip_tid=*/0));
    expect(ran0.load() == 0 && ran1.load() == 1, "a skipped worker does not run the job");
    std::atomic<int> after{0};
    pool.wait(pool.submit([&](int, int) {
      pool.barrier();
      after++;
    }));
    expect(after.load() == 2, "a whole-pool job with a barrier runs after a skipping one");
    for (int rep = 0; rep < 200; ++rep) {
      std::vector<std::atomic<int>> hits(37);
      if (rep % 3 == 0) pool.submit([&](int, int) { std::this_thread::sleep_for(std::chrono::microseconds(200)); });
      parallel_items(37, 2, [&](int it) { hits[it]++; });
      bool once = true;
      for (auto& h : hits) once = once && h.load() == 1;
      expect(once, "parallel_items runs each item once (rep " + std::to_string(rep) + ")");
    }
  }
  std::printf("%d passed, %d failed\n", passed, failed);
  return failed ? 1 : 0;
}
