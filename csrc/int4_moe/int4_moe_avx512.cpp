// [NOTE] AVX-512 F/BW/VL/DQ kernels, built twice from int4_moe_avx512.inl: without VNNI (Skylake-SP)
// and with it (Cascade Lake, Ice Lake, Zen 4...). This file is compiled without -mavx512vnni so the
// compiler cannot slip VNNI into the plain variant (GCC fuses madd + add into vpdpwssd when
// allowed); the VNNI copy enables it for its own functions with a target pragma.
#ifdef HK2_EMULATE
#include "tests/emu/simd_emu.h"  // SIMDe + AMX tile emulation: test builds only (csrc/tests/)
#else
#include <immintrin.h>
#endif

#include <algorithm>
#include <cmath>

#include "common.h"
#include "int4_moe/int4_moe.h"

namespace hk2 {

namespace avx512_plain {
namespace {
constexpr bool kVnni = false;
constexpr int P = 4;
#include "int4_moe/int4_moe_generic.inl"
#include "int4_moe/int4_moe_x86.inl"
#include "int4_moe/int4_moe_avx512.inl"
const MoeKernels kTable = {"avx512", P, /*gemm_min_tokens=*/{8, 10}, permute_row_t<P>, quantize_row_t<P>, swiglu_t,
                           gemv_exact, gemm_exact, gemv_fast, gemm_fast};
}  // namespace
}  // namespace avx512_plain

#ifndef HK2_EMULATE
#pragma GCC push_options
#pragma GCC target("avx512vnni")
#endif
namespace avx512_vnni {
namespace {
constexpr bool kVnni = true;
constexpr int P = 4;
#include "int4_moe/int4_moe_generic.inl"
#include "int4_moe/int4_moe_x86.inl"
#include "int4_moe/int4_moe_avx512.inl"
const MoeKernels kTable = {"avx512vnni", P, /*gemm_min_tokens=*/{8, 10}, permute_row_t<P>, quantize_row_t<P>, swiglu_t,
                           gemv_exact, gemm_exact, gemv_fast, gemm_fast};
}  // namespace
}  // namespace avx512_vnni
#ifndef HK2_EMULATE
#pragma GCC pop_options
#endif

const MoeKernels* kernels_avx512() { return &avx512_plain::kTable; }
const MoeKernels* kernels_avx512_vnni() { return &avx512_vnni::kTable; }

}  // namespace hk2
