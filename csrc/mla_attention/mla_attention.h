// Absorbed MLA attention over one layer's latent cache on the CPU (device=cpu): kernels and driver.
//
// [NOTE] Glossary (hybrid_k2/model/mla.py): T queries, H heads, R kv_lora_rank, P rope dims,
// K = R + P, S cached positions. In the absorbed form every query row r = t H + h (of T H rows) is
// already folded into the latent space and scaled: q [T H, K] fp32 = [q_nope W_UK, q_pe] * softmax_scale.
// Key j is the cache row [c_kv, k_pe] (K values), its value the c_kv part (R values), shared by every
// head (MQA), so
//   o[r] = sum_j softmax_j(q[r] . kv[j]) kv[j, :R]     over j <= start + t   (causal)
// which is what hybrid_k2/model/attention.py `absorbed` computes with torch.
//
// The driver (mla_attention.cpp) cuts the rows into groups of G = 64 and the positions into `splits`
// ranges chosen from the shape alone (never from the thread count, so the result does not depend on
// it), and runs every (group, range) as one item of parallel_items on the shared kernel pool. An item
// walks its range in blocks of B = 32 positions, widened from the cache's storage (fp32 is read in
// place; bf16, or fp8 e4m3 with two fp32 scales per row, into a per-thread fp32 buffer [B, K]), and
// hands each block to the kernel's `block` step: scores as dot products of rows (no transposition),
// causal mask, online-softmax update of the item's (m, l, acc). The ranges' partial results are then
// merged per row:
//   M = max_i m_i,  L = sum_i l_i e^(m_i - M),  o = sum_i acc_i e^(m_i - M) / L.
#pragma once

#include <cstdint>

namespace hk2 {

enum class KvKind : int { f32 = 0, bf16 = 1, fp8 = 2 };

constexpr int kMlaGroup = 64;  // query rows per item
constexpr int kMlaBlock = 32;  // key positions per block

// One block of n <= kMlaBlock key positions for G <= kMlaGroup query rows:
//   s[g, j] = q[g] . kv[j]  for j < vis[g] (later positions are masked: causal);
//   m, l, acc [G, R] updated by the online softmax of s (a row with vis[g] == 0 is left as it is).
// q [G, K] (row stride K), kv [n, K] fp32 row-major, m/l [G], acc [G, R], sbuf [G, kMlaBlock] scratch.
// m starts at -inf, l and acc at 0.
using MlaBlockFn = void (*)(const float* q, int G, int K, const float* kv, int n, int R, const int* vis, float* m,
                            float* l, float* acc, float* sbuf);

// One head's fold into / out of the latent space, y [T, O] (row stride ldy) from x [T, I] (row stride ldx):
//   cols  y[t, o] = sum_i x[t, i] w[i ldw + o]   (W_UK [N, R]: q_nope -> q_lat)
//   rows  y[t, o] = sum_i x[t, i] w[o ldw + i]   (W_UV [V, R]: o_lat -> o)
// The same with int8 weights (an int8 kv_b_proj: its per-row scales are applied by the caller, to x for
// cols (W_UK's rows are x's columns) and to y for rows), widened to fp32 in registers.
using MlaFoldFn = void (*)(const float* x, int64_t ldx, int T, const float* w, int64_t ldw, int I, int O, float* y,
                           int64_t ldy);
using MlaFoldI8Fn = void (*)(const float* x, int64_t ldx, int T, const int8_t* w, int64_t ldw, int I, int O, float* y,
                             int64_t ldy);

struct MlaKernels {
  const char* name;
  MlaBlockFn block;
  MlaFoldFn fold_cols, fold_rows;
  MlaFoldI8Fn fold_cols_i8, fold_rows_i8;
};

const MlaKernels* mla_kernels_scalar();
const MlaKernels* mla_kernels_avx2();  // nullptr where this build has no AVX2 file

struct LatentRows {
  const void* data;    // [>= S, K] in `kind`
  const float* scale;  // [>= S, 2] fp32 (fp8 only): the scale of c_kv [:R] and of k_pe [R:]
  KvKind kind;
};

// out [T H, R] fp32 = the absorbed attention of q [T H, K] over positions [0, S) of `cache`, query
// row r = t H + h at position start + t (sees positions <= start + t; S = start + T for a chunk).
// Runs on `threads` participants of the shared pool; blocks until done.
void mla_absorbed(const MlaKernels& k, const float* q, int T, int H, int R, int P, const LatentRows& cache, int64_t S,
                  int64_t start, float* out, int threads);

// y [T, H, O] fp32 = every head's fold of x [T, H, I] fp32 by its weight at w + h head_stride (row stride
// ldw; `cols` picks the form above), one item per head on `threads` participants of the shared pool.
void mla_fold(const MlaKernels& k, bool cols, const float* x, int T, int H, int I, int O, const float* w,
              int64_t head_stride, int64_t ldw, float* y, int threads);
void mla_fold(const MlaKernels& k, bool cols, const float* x, int T, int H, int I, int O, const int8_t* w,
              int64_t head_stride, int64_t ldw, float* y, int threads);

// The number of position ranges mla_absorbed splits S into for T H query rows (shape only).
int mla_splits(int64_t S, int rows);

}  // namespace hk2
