// Python bindings of the INT4 MoE op; registered from csrc/bindings.cpp. Raw pointers come from
// hybrid_k2/kernels/ops.py, which checks dtypes, shapes and contiguity and keeps the tensors alive.
#include <pybind11/pybind11.h>
#include <pybind11/stl.h>

#include <cstdlib>

#include "common.h"
#include "cpu_features.h"
#include "int4_moe/moe.h"
#include "int4_moe/packed_experts.h"
#include "thread_pool.h"

namespace py = pybind11;

namespace hk2 {
namespace {

const MoeKernels* kernels_for(const std::string& isa) {
  const std::string why = isa_unavailable_reason(isa);
  HK2_CHECK(why.empty(), "ISA path '" << isa << "' cannot run here: " << why);
  const MoeKernels* k = nullptr;
  if (isa == "scalar") k = kernels_scalar();
  if (isa == "avx2") k = kernels_avx2();
  if (isa == "avx512") k = kernels_avx512();
  if (isa == "avx512vnni") k = kernels_avx512_vnni();
  if (isa == "avx512bf16") k = kernels_avx512bf16();
  if (isa == "amx") k = kernels_amx();
  HK2_CHECK(k != nullptr, "ISA path '" << isa << "' is not part of this build");
  return k;
}

// What Python holds while a job runs: the pool ticket and the plan (which owns the scratch).
struct MoeHandle {
  ThreadPool* pool = nullptr;
  uint64_t ticket = 0;
  std::shared_ptr<MoeJob> job;
  bool waited = false;

  void wait() {
    if (waited || !pool) return;
    waited = true;
    pool->wait(ticket);
    job.reset();
  }
  bool done() const { return waited || !pool || pool->done(ticket); }
};

MoeHandle submit(const ExpertStore& store, uintptr_t x, bool x_bf16, int T, uintptr_t ids, bool ids_i64,
                 int K, uintptr_t weights, uintptr_t out, bool fast, const std::string& isa, int threads) {
  const MoeKernels* kern = kernels_for(isa);
  HK2_CHECK(threads >= 1, "threads must be >= 1, got " << threads);
  MoeCall call{&store, reinterpret_cast<const void*>(x), x_bf16, T, reinterpret_cast<const void*>(ids),
               ids_i64, K, reinterpret_cast<const float*>(weights), reinterpret_cast<float*>(out), fast, kern};
  MoeHandle h;
  h.job = plan_moe(call, threads);
  if (T == 0) return h;
  h.pool = &global_pool(threads);
  std::shared_ptr<MoeJob> job = h.job;
  ThreadPool* pool = h.pool;
  h.ticket = pool->submit([job, pool](int tid, int n) { run_moe(*job, *pool, tid, n); });
  return h;
}

}  // namespace

void register_int4_moe(py::module_& m) {
  // module_local: the emulated-ISA test module (_C_emu) binds the same C++ types in one process.
  py::class_<ExpertStore>(m, "ExpertStore", py::module_local(), py::buffer_protocol())
      .def(py::init<int, int, int, const std::string&>(), py::arg("num_experts"), py::arg("hidden"),
           py::arg("intermediate"), py::arg("layout"))
      .def_property_readonly("num_experts", &ExpertStore::num_experts)
      .def_property_readonly("hidden", &ExpertStore::hidden)
      .def_property_readonly("intermediate", &ExpertStore::intermediate)
      .def_property_readonly("layout", &ExpertStore::layout)
      .def_property_readonly("expert_stride", &ExpertStore::expert_stride)
      .def_property_readonly("total_bytes", &ExpertStore::total_bytes)
      .def("loaded", &ExpertStore::loaded)
      .def("sections", [](const ExpertStore& s) {
        const ExpertSections& o = s.sections();
        py::dict d;
        d["gate_packed"] = o.gate_packed;
        d["up_packed"] = o.up_packed;
        d["down_packed"] = o.down_packed;
        d["gate_scale"] = o.gate_scale;
        d["up_scale"] = o.up_scale;
        d["down_scale"] = o.down_scale;
        return d;
      })
      .def("load_expert",
           [](ExpertStore& s, int e, uintptr_t gp, uintptr_t gs, uintptr_t up, uintptr_t us, uintptr_t dp,
              uintptr_t ds) {
             py::gil_scoped_release nogil;
             s.load_expert(e, reinterpret_cast<const void*>(gp), reinterpret_cast<const void*>(gs),
                           reinterpret_cast<const void*>(up), reinterpret_cast<const void*>(us),
                           reinterpret_cast<const void*>(dp), reinterpret_cast<const void*>(ds));
           })
      .def_buffer([](ExpertStore& s) {
        return py::buffer_info(s.data(), 1, py::format_descriptor<uint8_t>::format(), 1,
                               {py::ssize_t(s.total_bytes())}, {py::ssize_t(1)}, /*readonly=*/false);
      });

  py::class_<MoeHandle>(m, "MoeHandle", py::module_local())
      .def("wait", &MoeHandle::wait, py::call_guard<py::gil_scoped_release>())
      .def("done", &MoeHandle::done);

  m.def("moe_submit", &submit, py::arg("experts"), py::arg("x"), py::arg("x_bf16"), py::arg("T"),
        py::arg("ids"), py::arg("ids_i64"), py::arg("K"), py::arg("weights"), py::arg("out"),
        py::arg("fast"), py::arg("isa"), py::arg("threads"), py::call_guard<py::gil_scoped_release>());

  m.def("isa_unavailable_reason", &isa_unavailable_reason);
  m.def("isa_names", &isa_names);
  m.def("isa_registry", [] {
    py::list out;
    for (const IsaInfo& i : isa_registry()) out.append(py::make_tuple(i.name, i.automatic, i.what));
    return out;
  });
  m.def("built_isas", [] {
    std::vector<std::string> out;
    for (const std::string& isa : isa_names()) {
      const bool built = isa == "scalar" ? kernels_scalar() != nullptr
                         : isa == "avx2" ? kernels_avx2() != nullptr
                         : isa == "avx512" ? kernels_avx512() != nullptr
                         : isa == "avx512vnni" ? kernels_avx512_vnni() != nullptr
                         : isa == "avx512bf16" ? kernels_avx512bf16() != nullptr
                                               : kernels_amx() != nullptr;
      if (built) out.push_back(isa);
    }
    return out;
  });
  m.def("default_threads", &default_threads);
  m.def("cpu_features", [] {
    const CpuFeatures& f = cpu_features();
    py::dict d;
    d["brand"] = f.brand;
    d["avx2"] = f.avx2 && f.fma && f.f16c && f.os_avx;
    d["avx512"] = f.avx512f && f.avx512bw && f.avx512vl && f.avx512dq && f.os_avx512;
    d["avx512vnni"] = f.avx512vnni;
    d["avx512bf16"] = f.avx512bf16;
    d["amx"] = f.amx_tile && f.amx_int8 && f.amx_bf16;
    d["os_amx"] = f.os_amx;
    return d;
  });
}

}  // namespace hk2
