// pybind11 registration only: every op is declared in its own header and wrapped with
// keyword-only arguments in hybrid_k2/kernels/ops.py.
#include <pybind11/pybind11.h>

#include "common.h"

namespace py = pybind11;

namespace hk2 {
void register_int4_moe(py::module_& m);      // csrc/int4_moe/int4_moe_py.cpp
void register_bandwidth(py::module_& m);     // csrc/bench/bandwidth_py.cpp
void register_int8_linear(py::module_& m);   // csrc/int8_linear/int8_linear_py.cpp
void register_mla_attention(py::module_& m); // csrc/mla_attention/mla_attention_py.cpp
}  // namespace hk2

#ifndef HK2_MODULE_NAME  // the emulated-ISA test build (csrc/tests/build.py) names it _C_emu
#define HK2_MODULE_NAME _C
#endif

PYBIND11_MODULE(HK2_MODULE_NAME, m) {
  m.doc() = "hybrid-k2 CPU kernels";
  // Bad input inside the kernels raises hybrid_k2.errors.HybridK2Error (one line, no traceback).
  static py::object base = py::module_::import("hybrid_k2.errors").attr("HybridK2Error");
  py::register_local_exception<hk2::Error>(m, "KernelError", base.ptr());
  hk2::register_int4_moe(m);
  hk2::register_bandwidth(m);
  hk2::register_int8_linear(m);
  hk2::register_mla_attention(m);
}
