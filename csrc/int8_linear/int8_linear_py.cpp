// Python binding of the int8 linear; registered from csrc/bindings.cpp. Raw pointers come from
// hybrid_k2/kernels/int8_linear.py, which checks dtypes, shapes and contiguity.
#include <pybind11/pybind11.h>

#include "common.h"
#include "cpu_features.h"
#include "int8_linear/int8_linear.h"

namespace py = pybind11;

namespace hk2 {
namespace {

const Int8LinearKernels* int8_kernels_for(const std::string& isa) {
  return scalar_or_avx2(isa, int8_kernels_scalar(), int8_kernels_avx2(), "int8 linear");
}

}  // namespace

void register_int8_linear(py::module_& m) {
  m.def("int8_linear_kernel", [](const std::string& isa) { return std::string(int8_kernels_for(isa)->name); },
        py::arg("isa"));
  m.def(
      "int8_linear",
      [](uintptr_t x, int T, int64_t in, uintptr_t q, uintptr_t scale, int O, uintptr_t y, const std::string& isa,
         int threads, int gemm_min_tokens) {
        const Int8LinearKernels* k = int8_kernels_for(isa);
        py::gil_scoped_release nogil;
        int8_linear(*k, reinterpret_cast<const float*>(x), T, in, reinterpret_cast<const int8_t*>(q),
                    reinterpret_cast<const float*>(scale), O, reinterpret_cast<float*>(y), threads, gemm_min_tokens);
      },
      py::arg("x"), py::arg("T"), py::arg("in_features"), py::arg("q"), py::arg("scale"), py::arg("O"), py::arg("y"),
      py::arg("isa"), py::arg("threads"), py::arg("gemm_min_tokens"));
}

}  // namespace hk2
