// Portable row helpers (k-order permutation, q8 quantisation, SwiGLU), included inside the
// anonymous namespace of every int4_moe_<isa>.cpp so that each copy is compiled (and
// auto-vectorised) with that file's flags and never shared across ISAs.

// Calls f(g0, p) for each block of k-order(P) over a row of G groups.
template <class F>
static inline void for_each_block(int G, int P, F f) {
  int g = 0;
  if (P > 0)
    for (; g + P <= G; g += P) f(g, P);
  for (; g < G; ++g) f(g, 1);
}

template <int P>
static void permute_row_t(const float* x, int n, float* out) {
  if (P == 0) {
    std::memcpy(out, x, sizeof(float) * n);
    return;
  }
  for_each_block(n / 32, P, [&](int g0, int p) {
    const float* src = x + 32 * g0;
    float* dst = out + 32 * g0;
    for (int j = 0; j < p; ++j)
      for (int i = 0; i < 16; ++i) {
        dst[16 * j + i] = src[32 * j + 2 * i];
        dst[16 * p + 16 * j + i] = src[32 * j + 2 * i + 1];
      }
  });
}

// q8_0-style: d = max|x| / 127 per group of 32, q = round-to-nearest-even(x / d).
template <int P>
static void quantize_row_t(const float* x, int n, int8_t* q, float* d4, int32_t* c4, float* e, float* dg) {
  const int G = n / 32;
  alignas(64) int8_t nat[32];
  for_each_block(G, P, [&](int g0, int p) {
    for (int j = 0; j < p; ++j) {
      const int g = g0 + j;
      const float* xs = x + 32 * g;
      float amax = 0.f;
      for (int i = 0; i < 32; ++i) amax = std::max(amax, std::fabs(xs[i]));
      const float d = amax / 127.f;
      const float id = d > 0.f ? 1.f / d : 0.f;
      int sum = 0;
      for (int i = 0; i < 32; ++i) {
        float v = std::nearbyint(xs[i] * id);
        v = std::min(127.f, std::max(-127.f, v));
        nat[i] = int8_t(v);
        sum += nat[i];
      }
      for (int l = 0; l < 4; ++l) d4[4 * g + l] = d;
      e[g] = 8.f * d * float(sum);
      dg[g] = d;
      int8_t* dst = q + 32 * g0;
      if (P == 0) {
        std::memcpy(dst + 32 * j, nat, 32);
      } else {
        for (int i = 0; i < 16; ++i) {
          dst[16 * j + i] = nat[2 * i];
          dst[16 * p + 16 * j + i] = nat[2 * i + 1];
        }
      }
    }
    // lane i of the block's int32 vector sums bytes [4i, 4i+4) of both halves.
    const int8_t* b = q + 32 * g0;
    const int half = P == 0 ? 16 : 16 * p;
    for (int i = 0; i < 4 * p; ++i) {
      int s = 0;
      for (int t = 0; t < 4; ++t) s += b[4 * i + t] + b[half + 4 * i + t];
      c4[4 * g0 + i] = 8 * s;
    }
  });
}

static void swiglu_t(const float* g, const float* u, int n, float* h) {
  for (int i = 0; i < n; ++i) h[i] = g[i] / (1.f + std::exp(-g[i])) * u[i];
}
