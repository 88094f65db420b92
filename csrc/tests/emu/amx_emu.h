// A small AMX tile emulation in plain C++ for the test builds: the tile intrinsics used by
// csrc/int4_moe/int4_moe_amx.cpp (and a few more), with per-thread tile state as on hardware.
// Semantics follow Intel's pseudo-code: a tile is rows x colsb bytes (at most 16 x 64); loads and
// stores use a byte stride; TDPB{S,U}{S,U}D: C[m][n] += sum_k A[m][4k+i] * B[k][4n+i] (int32);
// TDPBF16PS: C[m][n] += sum_k A[m][2k+i] * B[k][2n+i] (bf16 products in fp32).
#pragma once

#include <cstdint>
#include <cstring>
#include <stdexcept>

namespace hk2_emu {

struct Tiles {
  alignas(64) uint8_t data[8][16 * 64];
  int rows[8] = {};
  int colsb[8] = {};
  bool configured = false;
};

inline Tiles& tiles() {
  static thread_local Tiles t;
  return t;
}

inline void check(int t) {
  if (!tiles().configured || t < 0 || t > 7 || tiles().rows[t] == 0)
    throw std::logic_error("AMX emulation: tile used without a configuration");
}

inline void loadconfig(const void* cfg) {
  const uint8_t* c = static_cast<const uint8_t*>(cfg);
  if (c[0] != 1) throw std::logic_error("AMX emulation: palette must be 1");
  Tiles& T = tiles();
  for (int t = 0; t < 8; ++t) {
    uint16_t cb;
    std::memcpy(&cb, c + 16 + 2 * t, 2);
    T.colsb[t] = cb;
    T.rows[t] = c[48 + t];
    if (T.rows[t] > 16 || T.colsb[t] > 64) throw std::logic_error("AMX emulation: tile larger than 16 x 64 B");
  }
  T.configured = true;
}

inline void release() { tiles() = Tiles(); }

inline void loadd(int t, const void* base, long stride) {
  check(t);
  Tiles& T = tiles();
  std::memset(T.data[t], 0, sizeof(T.data[t]));
  for (int r = 0; r < T.rows[t]; ++r)
    std::memcpy(T.data[t] + 64 * r, static_cast<const uint8_t*>(base) + r * stride, size_t(T.colsb[t]));
}

inline void stored(int t, void* base, long stride) {
  check(t);
  Tiles& T = tiles();
  for (int r = 0; r < T.rows[t]; ++r)
    std::memcpy(static_cast<uint8_t*>(base) + r * stride, T.data[t] + 64 * r, size_t(T.colsb[t]));
}

inline void zero(int t) {
  check(t);
  std::memset(tiles().data[t], 0, sizeof(tiles().data[t]));
}

template <class TA, class TB>
void dp_int8(int c, int a, int b) {
  check(c), check(a), check(b);
  Tiles& T = tiles();
  const int M = T.rows[c], N = T.colsb[c] / 4, K = T.colsb[a] / 4;
  if (T.rows[a] != M || T.rows[b] != K || T.colsb[b] != T.colsb[c])
    throw std::logic_error("AMX emulation: tile shapes do not match");
  for (int m = 0; m < M; ++m)
    for (int n = 0; n < N; ++n) {
      int32_t s;
      std::memcpy(&s, T.data[c] + 64 * m + 4 * n, 4);
      for (int k = 0; k < K; ++k)
        for (int i = 0; i < 4; ++i)
          s += int32_t(TA(T.data[a][64 * m + 4 * k + i])) * int32_t(TB(T.data[b][64 * k + 4 * n + i]));
      std::memcpy(T.data[c] + 64 * m + 4 * n, &s, 4);
    }
}

inline float bf16(const uint8_t* p) {
  uint16_t h;
  std::memcpy(&h, p, 2);
  uint32_t u = uint32_t(h) << 16;
  float f;
  std::memcpy(&f, &u, 4);
  return f;
}

inline void dp_bf16(int c, int a, int b) {
  check(c), check(a), check(b);
  Tiles& T = tiles();
  const int M = T.rows[c], N = T.colsb[c] / 4, K = T.colsb[a] / 4;
  for (int m = 0; m < M; ++m)
    for (int n = 0; n < N; ++n) {
      float s;
      std::memcpy(&s, T.data[c] + 64 * m + 4 * n, 4);
      for (int k = 0; k < K; ++k)
        for (int i = 0; i < 2; ++i)
          s += bf16(T.data[a] + 64 * m + 4 * k + 2 * i) * bf16(T.data[b] + 64 * k + 4 * n + 2 * i);
      std::memcpy(T.data[c] + 64 * m + 4 * n, &s, 4);
    }
}

}  // namespace hk2_emu

#undef _tile_loadconfig
#undef _tile_release
#undef _tile_loadd
#undef _tile_stored
#undef _tile_zero
#undef _tile_dpbssd
#undef _tile_dpbsud
#undef _tile_dpbusd
#undef _tile_dpbuud
#undef _tile_dpbf16ps
#define _tile_loadconfig(cfg) hk2_emu::loadconfig(cfg)
#define _tile_release() hk2_emu::release()
#define _tile_loadd(t, base, stride) hk2_emu::loadd(t, base, stride)
#define _tile_stored(t, base, stride) hk2_emu::stored(t, base, stride)
#define _tile_zero(t) hk2_emu::zero(t)
#define _tile_dpbssd(c, a, b) hk2_emu::dp_int8<int8_t, int8_t>(c, a, b)
#define _tile_dpbsud(c, a, b) hk2_emu::dp_int8<int8_t, uint8_t>(c, a, b)
#define _tile_dpbusd(c, a, b) hk2_emu::dp_int8<uint8_t, int8_t>(c, a, b)
#define _tile_dpbuud(c, a, b) hk2_emu::dp_int8<uint8_t, uint8_t>(c, a, b)
#define _tile_dpbf16ps(c, a, b) hk2_emu::dp_bf16(c, a, b)
