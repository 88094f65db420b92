// [NOTE] Memory-bandwidth probe, the yardstick of the decode kernels (bench/bench_bandwidth.py,
// hybrid_k2.kernels.measure_bandwidth). Two figures, each with 1..N threads of the kernels' own pool:
//   read:  an AVX2 sum over a buffer (>= 1 GB), bytes read / s;
//   triad: STREAM's a[i] = b[i] + s * c[i], counted as STREAM does (24 bytes per element, the
//          write-allocate read of a not counted).
// Every buffer is touched before timing; the best of `repeats` runs is reported (as STREAM does).
#include <pybind11/pybind11.h>
#include <sys/mman.h>

#include <algorithm>
#include <chrono>
#include <cstring>

#include "common.h"
#include "cpu_features.h"
#include "thread_pool.h"

namespace py = pybind11;

namespace hk2 {

int64_t read_sum_avx2(const uint8_t* p, size_t n);  // bandwidth_avx2.cpp
int64_t int8_peak_avx2(int64_t iters, int seed);    // peak_avx2.cpp
int64_t int8_peak_avx512(int64_t iters, int seed);      // peak_avx512.cpp
int64_t int8_peak_avx512vnni(int64_t iters, int seed);  // peak_avx512.cpp

namespace {

int64_t read_sum_scalar(const uint8_t* p, size_t n) {
  const uint64_t* w = reinterpret_cast<const uint64_t*>(p);
  uint64_t s0 = 0, s1 = 0, s2 = 0, s3 = 0;
  for (size_t i = 0; i < n / 8; i += 4) {
    s0 += w[i];
    s1 += w[i + 1];
    s2 += w[i + 2];
    s3 += w[i + 3];
  }
  return int64_t(s0 + s1 + s2 + s3);
}

struct Mapping {
  uint8_t* p;
  size_t n;
  explicit Mapping(size_t bytes) : n(bytes) {
    void* m = mmap(nullptr, n, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
    HK2_CHECK(m != MAP_FAILED, "cannot map " << n << " bytes for the bandwidth probe");
    p = static_cast<uint8_t*>(m);
  }
  ~Mapping() { munmap(p, n); }
};

// Seconds of the fastest of `repeats` runs of fn(tid, n) on a pool of `threads`.
template <class Fn>
double best_seconds(int threads, int repeats, Fn fn) {
  ThreadPool& pool = global_pool(threads);
  double best = 1e30;
  for (int r = 0; r < repeats; ++r) {
    const auto t0 = std::chrono::steady_clock::now();
    pool.wait(pool.submit(fn));
    best = std::min(best, std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count());
  }
  return best;
}

py::dict measure(int64_t bytes, int threads, int repeats) {
  HK2_CHECK(bytes >= (1 << 20), "the probe needs at least 1 MiB");
  HK2_CHECK(threads >= 1 && repeats >= 1, "threads and repeats must be >= 1");
  const bool avx2 = isa_unavailable_reason("avx2").empty();
  py::dict out;
  {
    py::gil_scoped_release nogil;
    const size_t n = size_t(bytes) / (256 * size_t(threads)) * 256 * threads;
    Mapping buf(n);
    std::memset(buf.p, 1, n);
    volatile int64_t sink = 0;
    const double read_s = best_seconds(threads, repeats, [&](int tid, int nt) {
      const size_t part = n / nt;
      sink = sink + (avx2 ? read_sum_avx2(buf.p + part * tid, part) : read_sum_scalar(buf.p + part * tid, part));
    });
    const size_t elems = size_t(bytes) / 3 / sizeof(double) / threads * threads;
    Mapping a(elems * 8), b(elems * 8), c(elems * 8);
    double* A = reinterpret_cast<double*>(a.p);
    double* B = reinterpret_cast<double*>(b.p);
    double* C = reinterpret_cast<double*>(c.p);
    for (size_t i = 0; i < elems; ++i) A[i] = 0.0, B[i] = 1.0, C[i] = 2.0;
    const double triad_s = best_seconds(threads, repeats, [&](int tid, int nt) {
      const size_t part = elems / nt, lo = part * tid, hi = lo + part;
      for (size_t i = lo; i < hi; ++i) A[i] = B[i] + 3.0 * C[i];
    });
    py::gil_scoped_acquire gil;
    out["read_gbps"] = double(n) / read_s / 1e9;
    out["triad_gbps"] = double(elems) * 24.0 / triad_s / 1e9;
  }
  out["threads"] = threads;
  out["bytes"] = bytes;
  out["read_kernel"] = avx2 ? "avx2" : "scalar";
  return out;
}

// Int8 multiply-add throughput of the int8 instructions of ISA path `isa` on `threads` workers, in GOP/s
// (2 ops per MAC): avx2 (and scalar's reference point) maddubs + add on 32 bytes, avx512 the same on 64,
// avx512vnni and avx512bf16 (its int8 work is VNNI) vpdpbusd on 64. AMX has no probe.
double int8_peak_gops(int threads, const std::string& isa) {
  int64_t (*probe)(int64_t, int) = nullptr;
  const std::string need = isa == "avx512bf16" ? "avx512vnni" : isa;
  if (isa == "avx2") probe = int8_peak_avx2;
  if (isa == "avx512") probe = int8_peak_avx512;
  if (isa == "avx512vnni" || isa == "avx512bf16") probe = int8_peak_avx512vnni;
  HK2_CHECK(probe != nullptr, "no int8 peak probe for ISA path '" << isa << "' (avx2, avx512, avx512vnni, avx512bf16)");
  const std::string why = isa_unavailable_reason(need);
  HK2_CHECK(why.empty(), "the " << isa << " int8 peak probe cannot run here: " << why);
  const int64_t iters = isa == "avx2" ? 2000000 : 1000000;
  int64_t macs = 0;
  py::gil_scoped_release nogil;
  const double s = best_seconds(threads, 3, [&](int tid, int) {
    const int64_t n = probe(iters, tid);
    if (tid == 0) macs = n;
  });
  return 2.0 * double(macs) * threads / s / 1e9;
}

}  // namespace

void register_bandwidth(py::module_& m) {
  m.def("measure_bandwidth", &measure, py::arg("bytes"), py::arg("threads"), py::arg("repeats"));
  m.def("int8_peak_gops", &int8_peak_gops, py::arg("threads"), py::arg("isa") = "avx2");
}

}  // namespace hk2
