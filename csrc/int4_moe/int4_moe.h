// The routed-MoE INT4 kernels: data views and the per-ISA kernel table.
//
// [NOTE] Glossary: T tokens, D hidden, I intermediate, E experts, K top-k, G = cols/32 quant groups.
// Weights stay in the compressed-tensors bytes (layout "ct-int4-g32", see packed_experts.h): row r
// of a [rows, cols] matrix is cols/2 bytes, byte b holding column 2b in its low nibble and 2b+1 in
// its high nibble, value u = q + 8 (q in [-8, 7]); one bf16 scale per 32 columns.
//
// Activations are put once per call into the "k-order" of the ISA, so that the two nibbles of a
// byte meet their activations without any shuffle in the hot loop. k-order(P), P >= 1, for a row of
// G groups: groups are taken P at a time (then any remaining groups one at a time); a block of p
// groups starting at group g0 stores at position 16*j + i the column 32*(g0+j) + 2i (low nibbles,
// "evens") and at 16*p + 16*j + i the column 32*(g0+j) + 2i + 1 ("odds"), j < p, i < 16. One vector
// load of 16*p packed bytes, masked to low and high nibbles, then lines up with the two halves.
// P = 0 is the natural column order (the scalar reference).
#pragma once

#include <cstdint>

namespace hk2 {

// One [rows, cols] INT4 matrix of one expert.
struct Int4Matrix {
  const uint8_t* packed;   // [rows, cols/2]
  const uint16_t* scale;   // [rows, cols/32] bf16
  int rows;
  int cols;
};

// Activation rows, already in the ISA's k-order. Exact mode fills f32; fast mode q8 + the rest.
struct Acts {
  const float* f32;     // [*, ld]  fp32 activations (exact)
  const int8_t* q8;     // [*, ld]  int8 activations (fast), q = round(x / d) per group of 32
  const float* d4;      // [*, ld/8]  d of the group, repeated 4 times (one per int32 lane of a group)
  const int32_t* c4;    // [*, ld/8]  8 * sum of the 8 q8 values feeding each int32 lane (offset fix)
  const float* e;       // [*, ld/32] 8 * d * sum(q) of the group (offset fix for the GEMM kernels)
  const float* d;       // [*, ld/32] d of the group
  int64_t ld;           // elements per activation row (= cols of the matrix)
};

// y[m * ldy + (r - r0)] = sum_k W[r, k] * act[idx[m]][k], r in [r0, r1), m < M.
// r0, r1 are multiples of 32; scratch is per-thread, kScratchBytes long, 64-byte aligned.
using MatmulFn = void (*)(const Int4Matrix& w, int r0, int r1, const Acts& a, const int32_t* idx,
                          int M, float* y, int ldy, uint8_t* scratch);

constexpr int64_t kScratchBytes = 1 << 21;

// Per-ISA kernel table, filled at compile time by each int4_moe_<isa>.cpp.
struct MoeKernels {
  const char* name;
  int P;                  // k-order of the activations (see above)
  // Tokens of one expert from which the GEMM kernels beat the GEMV ones, [exact, fast]; measured
  // per ISA (docs/kernels.md, "GEMV/GEMM switch").
  int gemm_min_tokens[2];
  // x: [n] fp32 -> out: [n] in k-order(P)
  void (*permute_row)(const float* x, int n, float* out);
  // x: [n] fp32 -> q8 [n], d4 [n/8], c4 [n/8], e [n/32], d [n/32] in k-order(P)
  void (*quantize_row)(const float* x, int n, int8_t* q, float* d4, int32_t* c4, float* e, float* d);
  // h[i] = silu(g[i]) * u[i]
  void (*swiglu)(const float* g, const float* u, int n, float* h);
  MatmulFn gemv_exact, gemm_exact, gemv_fast, gemm_fast;
  // nullptr: fast mode takes q8 activations (quantize_row). Otherwise fast mode takes fp32 rows
  // made by this function (k-order, rounded to the ISA's activation type, e.g. bf16).
  void (*prepare_fast_f32)(const float* x, int n, float* out) = nullptr;
};

// The tables; those whose ISA this build lacks are nullptr (see cpu_features.cpp for availability).
const MoeKernels* kernels_scalar();
const MoeKernels* kernels_avx2();
const MoeKernels* kernels_avx512();
const MoeKernels* kernels_avx512_vnni();
const MoeKernels* kernels_avx512bf16();
const MoeKernels* kernels_amx();

}  // namespace hk2
