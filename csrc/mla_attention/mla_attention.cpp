// [NOTE] Driver of the absorbed MLA attention (mla_attention.h): splits, widening of the cache's
// storage to fp32, causal visibility per block, and the merge of the ranges' partial softmaxes.
// Plain C++ (no ISA flags): the widening loops are simple enough for the compiler's SSE2 code, and
// what costs (scores and values, 2 x 64 x K multiply-adds per position for decode) is in the kernels.
#include <algorithm>
#include <cmath>
#include <cstring>
#include <limits>
#include <memory>
#include <vector>

#include "common.h"
#include "mla_attention/mla_attention.h"
#include "thread_pool.h"

namespace hk2 {
namespace {

constexpr int kMaxSplits = 32;          // ranges per row group (partials: splits x rows x R floats)
constexpr int64_t kMinSplitRows = 512;  // positions per range at least

// float8 e4m3fn -> fp32 for all 256 codes: bias 7, no infinities, S.1111.111 is NaN.
struct Fp8Table {
  float v[256];
  Fp8Table() {
    for (int c = 0; c < 256; ++c) {
      const int e = (c >> 3) & 15, mant = c & 7;
      float x = e == 0 ? std::ldexp(float(mant) / 8.f, -6) : std::ldexp(1.f + float(mant) / 8.f, e - 7);
      if (e == 15 && mant == 7) x = std::numeric_limits<float>::quiet_NaN();
      v[c] = (c & 0x80) ? -x : x;
    }
  }
};

const float* fp8_table() {
  static const Fp8Table t;
  return t.v;
}

// Positions [s0, s0 + n) as fp32 rows [n, K]: a pointer into the cache (fp32) or into buf.
const float* widen(const LatentRows& c, int K, int R, int64_t s0, int n, float* buf) {
  if (c.kind == KvKind::f32) return static_cast<const float*>(c.data) + s0 * K;
  if (c.kind == KvKind::bf16) {
    const uint16_t* p = static_cast<const uint16_t*>(c.data) + s0 * K;
    for (int64_t i = 0, e = int64_t(n) * K; i < e; ++i) buf[i] = bf16_to_f32(p[i]);
    return buf;
  }
  const float* lut = fp8_table();
  for (int j = 0; j < n; ++j) {
    const uint8_t* p = static_cast<const uint8_t*>(c.data) + (s0 + j) * K;
    const float sc = c.scale[(s0 + j) * 2], sp = c.scale[(s0 + j) * 2 + 1];
    float* o = buf + int64_t(j) * K;
    for (int k = 0; k < R; ++k) o[k] = lut[p[k]] * sc;
    for (int k = R; k < K; ++k) o[k] = lut[p[k]] * sp;
  }
  return buf;
}

}  // namespace

int mla_splits(int64_t S, int rows) {
  const int64_t groups = div_up(std::max(rows, 1), kMlaGroup);
  const int64_t by_len = div_up(std::max<int64_t>(S, 1), kMinSplitRows);
  const int64_t by_groups = div_up(kMaxSplits, groups);  // enough items for the pool, bounded partials
  return int(std::max<int64_t>(1, std::min({by_len, by_groups, int64_t(kMaxSplits)})));
}

void mla_absorbed(const MlaKernels& k, const float* q, int T, int H, int R, int P, const LatentRows& cache, int64_t S,
                  int64_t start, float* out, int threads) {
  HK2_CHECK(T >= 1 && H >= 1 && R >= 1 && P >= 0, "mla_absorbed: bad shape T=" << T << " H=" << H << " R=" << R
                                                                                << " P=" << P);
  HK2_CHECK(start >= 0 && start + T <= S, "mla_absorbed: queries at " << start << ".." << start + T - 1
                                                                       << " past the " << S << " positions given");
  HK2_CHECK(threads >= 1, "threads must be >= 1, got " << threads);
  const int K = R + P, rows = T * H;
  const int groups = int(div_up(rows, kMlaGroup));
  const int splits = mla_splits(S, rows);
  const float NEG_INF = -std::numeric_limits<float>::infinity();
  // Partials of every (split, row): one split writes straight into out. Each item starts its own
  // (m, l, acc) below, so nothing is zeroed here (the accumulators are 4 MB for decode at 32K).
  std::unique_ptr<float[]> part_acc(splits > 1 ? new float[size_t(splits) * rows * R] : nullptr);
  std::vector<float> part_m(size_t(splits) * rows), part_l(size_t(splits) * rows);

  parallel_items(groups * splits, threads, [&](int item) {
    thread_local std::vector<float> buf, sbuf;
    thread_local std::vector<int> vis;
    buf.resize(size_t(kMlaBlock) * K);
    sbuf.resize(size_t(kMlaGroup) * kMlaBlock);
    vis.resize(kMlaGroup);
    const int gi = item / splits, si = item % splits;
    const int r0 = gi * kMlaGroup, G = std::min(kMlaGroup, rows - r0);
    const int64_t a = S * si / splits, b = S * (si + 1) / splits;
    float* m = part_m.data() + size_t(si) * rows + r0;
    float* l = part_l.data() + size_t(si) * rows + r0;
    float* acc = (splits > 1 ? part_acc.get() + size_t(si) * rows * R : out) + int64_t(r0) * R;
    std::fill(m, m + G, NEG_INF);
    std::fill(l, l + G, 0.f);
    std::fill(acc, acc + int64_t(G) * R, 0.f);
    const int64_t last_pos = start + (r0 + G - 1) / H;  // the group's last query sees up to here
    for (int64_t s0 = a; s0 < b && s0 <= last_pos; s0 += kMlaBlock) {
      const int n = int(std::min<int64_t>(kMlaBlock, b - s0));
      for (int g = 0; g < G; ++g)
        vis[g] = int(std::clamp<int64_t>(start + (r0 + g) / H - s0 + 1, 0, n));
      const float* kv = widen(cache, K, R, s0, n, buf.data());
      k.block(q + int64_t(r0) * K, G, K, kv, n, R, vis.data(), m, l, acc, sbuf.data());
    }
    if (splits == 1)  // normalise in place
      for (int g = 0; g < G; ++g) {
        const float inv = l[g] > 0.f ? 1.f / l[g] : 0.f;
        for (int c = 0; c < R; ++c) acc[int64_t(g) * R + c] *= inv;
      }
  });
  if (splits == 1) return;

  parallel_items(groups, threads, [&](int gi) {
    const int r0 = gi * kMlaGroup, r1 = std::min(rows, r0 + kMlaGroup);
    for (int r = r0; r < r1; ++r) {
      float M = NEG_INF;
      for (int si = 0; si < splits; ++si) M = std::max(M, part_m[size_t(si) * rows + r]);
      float* o = out + int64_t(r) * R;
      std::fill(o, o + R, 0.f);
      float L = 0.f;
      for (int si = 0; si < splits; ++si) {
        const float l = part_l[size_t(si) * rows + r];
        if (l == 0.f) continue;  // a range this row does not see
        const float w = std::exp(part_m[size_t(si) * rows + r] - M);
        L += l * w;
        const float* pa = part_acc.get() + (size_t(si) * rows + r) * R;
        for (int c = 0; c < R; ++c) o[c] += w * pa[c];
      }
      const float inv = L > 0.f ? 1.f / L : 0.f;
      for (int c = 0; c < R; ++c) o[c] *= inv;
    }
  });
}

namespace {

template <typename W, typename Fn>
void fold_heads(Fn fn, const float* x, int T, int H, int I, int O, const W* w, int64_t head_stride, int64_t ldw,
                float* y, int threads) {
  HK2_CHECK(T >= 1 && H >= 1 && I >= 1 && O >= 1, "mla_fold: bad shape T=" << T << " H=" << H << " I=" << I
                                                                           << " O=" << O);
  HK2_CHECK(threads >= 1, "threads must be >= 1, got " << threads);
  parallel_items(H, threads, [&](int h) {
    fn(x + int64_t(h) * I, int64_t(H) * I, T, w + h * head_stride, ldw, I, O, y + int64_t(h) * O, int64_t(H) * O);
  });
}

}  // namespace

void mla_fold(const MlaKernels& k, bool cols, const float* x, int T, int H, int I, int O, const float* w,
              int64_t head_stride, int64_t ldw, float* y, int threads) {
  fold_heads(cols ? k.fold_cols : k.fold_rows, x, T, H, I, O, w, head_stride, ldw, y, threads);
}

void mla_fold(const MlaKernels& k, bool cols, const float* x, int T, int H, int I, int O, const int8_t* w,
              int64_t head_stride, int64_t ldw, float* y, int threads) {
  fold_heads(cols ? k.fold_cols_i8 : k.fold_rows_i8, x, T, H, I, O, w, head_stride, ldw, y, threads);
}

}  // namespace hk2
