// [NOTE] AMX kernels (Sapphire Rapids and later): the GEMM path of fast mode on INT8 tiles; the
// GEMV paths and exact mode are the AVX-512 VNNI ones (int4_moe_avx512.inl), since decode is
// bound by memory and exact mode needs fp32 arithmetic.
//
// Tiles, for 16 tokens x 32 weight rows x one group of 32 k per step:
//   tmm2 A [16 tokens][32 B]   the tokens' q8 activations of the group ([16 evens | 16 odds])
//   tmm3 B [8][64 B]           weight rows 0-15: row kk = chunk kk (4 k) of 16 weight rows, u8
//   tmm4 B [8][64 B]           weight rows 16-31
//   tmm0/1 C [16][16 x int32]  dot(u, q) of the group (TDPBSUD: A signed, B unsigned)
// The weight block is unpacked once by unpack_fast_block<16, 32> (whose per-group layout is exactly
// two B tiles) and reused by every 16-token tile. Per-group scales cannot live inside a tile sum,
// so C is stored after each group and folded into fp32 accumulators with AVX-512:
// acc += cvt(C) * scale_w * d_x - scale_w * e_x (e = 8 * d_x * sum q, the nibble offset).
// AMX-BF16 tiles are not used: bf16 activations would be neither exact (exact mode is fp32) nor
// faster than INT8 here.
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
namespace amx {
namespace {

constexpr bool kVnni = true;
constexpr int P = 4;
#include "int4_moe/int4_moe_generic.inl"
#include "int4_moe/int4_moe_x86.inl"
#include "int4_moe/int4_moe_avx512.inl"

struct alignas(64) TileConfig {
  uint8_t palette_id;
  uint8_t start_row;
  uint8_t reserved[14];
  uint16_t colsb[16];
  uint8_t rows[16];
};

void configure_tiles() {
  TileConfig c{};
  c.palette_id = 1;
  const int rows[5] = {16, 16, 16, 8, 8}, colsb[5] = {64, 64, 32, 64, 64};
  for (int t = 0; t < 5; ++t) {
    c.rows[t] = uint8_t(rows[t]);
    c.colsb[t] = uint16_t(colsb[t]);
  }
  _tile_loadconfig(&c);
}

constexpr int kGroupsAmx = 16;  // groups per K block

void gemm_fast_amx(const Int4Matrix& w, int r0, int r1, const Acts& a, const int32_t* idx, int M, float* y, int ldy,
                   uint8_t* scratch) {
  const int G = w.cols / 32;
  // scratch: wq [16 groups][1 KB] | ws [16][32] fp32 | A [16 groups][16 tokens][32 B] | C [16][32] int32 |
  //          acc [16][32] fp32 | even, odd [G]
  uint8_t* wq = scratch;
  float* ws = reinterpret_cast<float*>(wq + kGroupsAmx * 1024);
  uint8_t* abuf = reinterpret_cast<uint8_t*>(ws + kGroupsAmx * 32);
  int32_t* cbuf = reinterpret_cast<int32_t*>(abuf + kGroupsAmx * 512);
  float* acc = reinterpret_cast<float*>(cbuf + 16 * 32);
  int32_t* even = reinterpret_cast<int32_t*>(acc + 16 * 32);
  int32_t* odd = even + G;
  group_offsets(G, even, odd);
  configure_tiles();
  for (int r = r0; r < r1; r += 32)
    for (int g0 = 0; g0 < G; g0 += kGroupsAmx) {
      const int ng = std::min(kGroupsAmx, G - g0);
      unpack_fast_block<16, 32>(w, r, g0, ng, wq, ws);
      for (int m0 = 0; m0 < M; m0 += 16) {
        const int mt = std::min(16, M - m0);
        std::memset(abuf, 0, size_t(ng) * 512);
        for (int t = 0; t < mt; ++t) {
          const int8_t* q = a.q8 + int64_t(idx[m0 + t]) * a.ld;
          float* at = acc + t * 32;
          const float* yt = y + int64_t(m0 + t) * ldy + (r - r0);
          for (int i = 0; i < 32; ++i) at[i] = g0 == 0 ? 0.f : yt[i];
          for (int gl = 0; gl < ng; ++gl) {
            std::memcpy(abuf + gl * 512 + t * 32, q + even[g0 + gl], 16);
            std::memcpy(abuf + gl * 512 + t * 32 + 16, q + odd[g0 + gl], 16);
          }
        }
        for (int gl = 0; gl < ng; ++gl) {
          const int g = g0 + gl;
          _tile_zero(0);
          _tile_zero(1);
          _tile_loadd(2, abuf + gl * 512, 32);
          _tile_loadd(3, wq + gl * 1024, 64);
          _tile_loadd(4, wq + gl * 1024 + 512, 64);
          _tile_dpbsud(0, 2, 3);
          _tile_dpbsud(1, 2, 4);
          _tile_stored(0, cbuf, 128);
          _tile_stored(1, cbuf + 16, 128);
          const __m512 ws0 = _mm512_load_ps(ws + gl * 32), ws1 = _mm512_load_ps(ws + gl * 32 + 16);
          for (int t = 0; t < mt; ++t) {
            const float* d4 = a.d4 + int64_t(idx[m0 + t]) * (a.ld / 8);
            const float* e = a.e + int64_t(idx[m0 + t]) * (a.ld / 32);
            const __m512 dx = _mm512_set1_ps(d4[4 * g]), ex = _mm512_set1_ps(e[g]);
            float* at = acc + t * 32;
            __m512 a0 = _mm512_loadu_ps(at), a1 = _mm512_loadu_ps(at + 16);
            a0 = _mm512_fmadd_ps(_mm512_cvtepi32_ps(_mm512_loadu_si512(cbuf + t * 32)), _mm512_mul_ps(ws0, dx), a0);
            a1 = _mm512_fmadd_ps(_mm512_cvtepi32_ps(_mm512_loadu_si512(cbuf + t * 32 + 16)), _mm512_mul_ps(ws1, dx), a1);
            _mm512_storeu_ps(at, _mm512_fnmadd_ps(ws0, ex, a0));
            _mm512_storeu_ps(at + 16, _mm512_fnmadd_ps(ws1, ex, a1));
          }
        }
        for (int t = 0; t < mt; ++t) std::memcpy(y + int64_t(m0 + t) * ldy + (r - r0), acc + t * 32, 32 * sizeof(float));
      }
    }
  _tile_release();
}

const MoeKernels kTable = {"amx", P, /*gemm_min_tokens=*/{8, 16}, permute_row_t<P>, quantize_row_t<P>, swiglu_t,
                           gemv_exact, gemm_exact, gemv_fast, gemm_fast_amx};

}  // namespace
}  // namespace amx

const MoeKernels* kernels_amx() { return &amx::kTable; }

}  // namespace hk2
