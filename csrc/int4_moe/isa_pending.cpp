// Tables of the ISA paths not written yet: the dispatcher reports them as not part of this build.
#include "int4_moe/int4_moe.h"

namespace hk2 {
const MoeKernels* kernels_avx512() { return nullptr; }
const MoeKernels* kernels_avx512_vnni() { return nullptr; }
const MoeKernels* kernels_avx512bf16() { return nullptr; }
const MoeKernels* kernels_amx() { return nullptr; }
}  // namespace hk2
