// Python binding of the absorbed MLA attention; registered from csrc/bindings.cpp. Raw pointers come
// from hybrid_k2/kernels/mla_attention.py, which checks dtypes, shapes and contiguity.
#include <pybind11/pybind11.h>

#include "common.h"
#include "cpu_features.h"
#include "mla_attention/mla_attention.h"

namespace py = pybind11;

namespace hk2 {
namespace {

const MlaKernels* mla_kernels_for(const std::string& isa) {
  return scalar_or_avx2(isa, mla_kernels_scalar(), mla_kernels_avx2(), "MLA attention");
}

}  // namespace

void register_mla_attention(py::module_& m) {
  m.def("mla_attention_kernel", [](const std::string& isa) { return std::string(mla_kernels_for(isa)->name); },
        py::arg("isa"));
  m.def("mla_splits", &mla_splits, py::arg("S"), py::arg("rows"));
  m.def(
      "mla_absorbed",
      [](uintptr_t q, int T, int H, int R, int P, uintptr_t data, uintptr_t scale, int kind, int64_t S, int64_t start,
         uintptr_t out, const std::string& isa, int threads) {
        HK2_CHECK(kind >= 0 && kind <= 2, "cache kind must be 0 (fp32), 1 (bf16) or 2 (fp8), got " << kind);
        const MlaKernels* k = mla_kernels_for(isa);
        const LatentRows cache{reinterpret_cast<const void*>(data), reinterpret_cast<const float*>(scale),
                               KvKind(kind)};
        py::gil_scoped_release nogil;
        mla_absorbed(*k, reinterpret_cast<const float*>(q), T, H, R, P, cache, S, start, reinterpret_cast<float*>(out),
                     threads);
      },
      py::arg("q"), py::arg("T"), py::arg("H"), py::arg("R"), py::arg("P"), py::arg("data"), py::arg("scale"),
      py::arg("kind"), py::arg("S"), py::arg("start"), py::arg("out"), py::arg("isa"), py::arg("threads"));
  m.def(
      "mla_fold",
      [](bool cols, uintptr_t x, int T, int H, int I, int O, uintptr_t w, bool int8_weights, int64_t head_stride,
         int64_t ldw, uintptr_t y, const std::string& isa, int threads) {
        const MlaKernels* k = mla_kernels_for(isa);
        const float* xp = reinterpret_cast<const float*>(x);
        float* yp = reinterpret_cast<float*>(y);
        py::gil_scoped_release nogil;
        if (int8_weights)
          mla_fold(*k, cols, xp, T, H, I, O, reinterpret_cast<const int8_t*>(w), head_stride, ldw, yp, threads);
        else
          mla_fold(*k, cols, xp, T, H, I, O, reinterpret_cast<const float*>(w), head_stride, ldw, yp, threads);
      },
      py::arg("cols"), py::arg("x"), py::arg("T"), py::arg("H"), py::arg("I"), py::arg("O"), py::arg("w"),
      py::arg("int8_weights"), py::arg("head_stride"), py::arg("ldw"), py::arg("y"), py::arg("isa"),
      py::arg("threads"));
}

}  // namespace hk2
