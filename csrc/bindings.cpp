// pybind11 registration only: every op is declared in its own header and wrapped with
// keyword-only arguments in hybrid_k2/kernels/ops.py.
#include <pybind11/pybind11.h>

namespace py = pybind11;

PYBIND11_MODULE(_C, m) {
  m.doc() = "hybrid-k2 CPU kernels";
}
