// AVX-512 (F/BW/VL/DQ) kernel bodies, k-order P = 4: one 64-byte load of packed weights covers four
// groups. Included twice by int4_moe_avx512.cpp (kVnni false, and true under
// `#pragma GCC target("avx512vnni")`) and by the AMX and AVX-512-BF16 files (kVnni true); the
// includer defines kVnni and P = 4 and includes int4_moe_generic.inl and int4_moe_x86.inl first.
// Same algorithms as int4_moe_avx2.cpp (see its [NOTE]), twice as wide; with VNNI, vpdpbusd does
// maddubs + madd + add in one instruction and the GEMM keeps int32 sums per group.

inline float hsum512(__m512 v) {
  const __m256 lo = _mm512_castps512_ps256(v);
  const __m256 hi = _mm256_castpd_ps(_mm512_extractf64x4_pd(_mm512_castps_pd(v), 1));
  return hsum(_mm256_add_ps(lo, hi));
}

// int32 lanes of dot(u, x) for one 4-group block: lane i sums bytes [4i, 4i+4) of both halves.
inline __m512i dot_u8s8(__m512i lo, __m512i xa, __m512i hi, __m512i xb) {
  if constexpr (kVnni) {
    return _mm512_dpbusd_epi32(_mm512_dpbusd_epi32(_mm512_setzero_si512(), lo, xa), hi, xb);
  } else {
    const __m512i s16 = _mm512_add_epi16(_mm512_maddubs_epi16(lo, xa), _mm512_maddubs_epi16(hi, xb));
    return _mm512_madd_epi16(s16, _mm512_set1_epi16(1));
  }
}

// Four bf16 scales -> [s0 x4, s1 x4, s2 x4, s3 x4] fp32.
inline __m512 scale_quad(const uint16_t* p) {
  const __m128i s = _mm_loadl_epi64(reinterpret_cast<const __m128i*>(p));
  const __m128 f = _mm_castsi128_ps(_mm_slli_epi32(_mm_cvtepu16_epi32(s), 16));
  return _mm512_permutexvar_ps(_mm512_setr_epi32(0, 0, 0, 0, 1, 1, 1, 1, 2, 2, 2, 2, 3, 3, 3, 3),
                               _mm512_castps128_ps512(f));
}

void gemv_fast(const Int4Matrix& w, int r0, int r1, const Acts& a, const int32_t* idx, int M, float* y, int ldy,
               uint8_t*) {
  const int G = w.cols / 32, nblk = G / 4;
  const int64_t rb = w.cols / 2;
  const __m512i m4 = _mm512_set1_epi8(0x0f);
  for (int r = r0; r < r1; r += 4) {
    const uint8_t* wr = w.packed + int64_t(r) * rb;
    const uint16_t* sr = w.scale + int64_t(r) * G;
    for (int m = 0; m < M; ++m) {
      const int8_t* q = a.q8 + int64_t(idx[m]) * a.ld;
      const float* d4 = a.d4 + int64_t(idx[m]) * (a.ld / 8);
      const int32_t* c4 = a.c4 + int64_t(idx[m]) * (a.ld / 8);
      __m512 acc[4] = {_mm512_setzero_ps(), _mm512_setzero_ps(), _mm512_setzero_ps(), _mm512_setzero_ps()};
      for (int b = 0; b < nblk; ++b) {
        const __m512i xa = _mm512_loadu_si512(q + 128 * b);
        const __m512i xb = _mm512_loadu_si512(q + 128 * b + 64);
        const __m512i cr = _mm512_loadu_si512(c4 + 16 * b);
        const __m512 dx = _mm512_loadu_ps(d4 + 16 * b);
        for (int j = 0; j < 4; ++j) {
          const uint8_t* p = wr + j * rb + 64 * b;
          if (m == 0) _mm_prefetch(reinterpret_cast<const char*>(p + 4 * rb), _MM_HINT_T0);  // next 4-row block
          const __m512i wv = _mm512_loadu_si512(p);
          const __m512i lo = _mm512_and_si512(wv, m4);
          const __m512i hi = _mm512_and_si512(_mm512_srli_epi16(wv, 4), m4);
          const __m512i s32 = _mm512_sub_epi32(dot_u8s8(lo, xa, hi, xb), cr);
          const __m512 sc = _mm512_mul_ps(scale_quad(sr + j * G + 4 * b), dx);
          acc[j] = _mm512_fmadd_ps(_mm512_cvtepi32_ps(s32), sc, acc[j]);
        }
      }
      float tail[4] = {0.f, 0.f, 0.f, 0.f};
      for (int g = 4 * nblk; g < G; ++g)  // remaining groups, one at a time
        for (int j = 0; j < 4; ++j)
          tail[j] += bf16_to_f32(sr[j * G + g]) * d4[4 * g] *
                     float(group_dot_q8_sse(wr + j * rb + 16 * g, q + 32 * g, c4 + 4 * g));
      for (int j = 0; j < 4; ++j) y[int64_t(m) * ldy + (r - r0) + j] = hsum512(acc[j]) + tail[j];
    }
  }
}

void gemv_exact(const Int4Matrix& w, int r0, int r1, const Acts& a, const int32_t* idx, int M, float* y, int ldy,
                uint8_t* scratch) {
  const int G = w.cols / 32;
  const int64_t rb = w.cols / 2;
  int32_t* even = reinterpret_cast<int32_t*>(scratch);
  int32_t* odd = even + G;
  group_offsets(G, even, odd);
  const __m128i m4 = _mm_set1_epi8(0x0f), eight = _mm_set1_epi8(8);
  for (int r = r0; r < r1; ++r) {
    const uint8_t* wr = w.packed + int64_t(r) * rb;
    const uint16_t* sr = w.scale + int64_t(r) * G;
    for (int m = 0; m < M; ++m) {
      const float* x = a.f32 + int64_t(idx[m]) * a.ld;
      __m512 acc0 = _mm512_setzero_ps(), acc1 = _mm512_setzero_ps();
      for (int g = 0; g < G; ++g) {
        if (m == 0 && (g & 3) == 0) _mm_prefetch(reinterpret_cast<const char*>(wr + 16 * g + 4 * rb), _MM_HINT_T0);
        const __m128i wv = _mm_loadu_si128(reinterpret_cast<const __m128i*>(wr + 16 * g));
        const __m128i qe = _mm_sub_epi8(_mm_and_si128(wv, m4), eight);
        const __m128i qo = _mm_sub_epi8(_mm_and_si128(_mm_srli_epi16(wv, 4), m4), eight);
        __m512 t = _mm512_mul_ps(_mm512_cvtepi32_ps(_mm512_cvtepi8_epi32(qe)), _mm512_loadu_ps(x + even[g]));
        t = _mm512_fmadd_ps(_mm512_cvtepi32_ps(_mm512_cvtepi8_epi32(qo)), _mm512_loadu_ps(x + odd[g]), t);
        if (g & 1)
          acc1 = _mm512_fmadd_ps(t, _mm512_set1_ps(bf16_to_f32(sr[g])), acc1);
        else
          acc0 = _mm512_fmadd_ps(t, _mm512_set1_ps(bf16_to_f32(sr[g])), acc0);
      }
      y[int64_t(m) * ldy + (r - r0)] = hsum512(_mm512_add_ps(acc0, acc1));
    }
  }
}

// ---- GEMM, fast: 32 rows (two 16-row vectors) x MR tokens per tile

constexpr int kGroups512 = 16;  // groups per K block: 16 x 1 KB of unpacked weights

template <int MR>
inline void fast_tokens512(const uint8_t* wq, const float* ws, int g0, int ng, const Acts& a, const int32_t* idx,
                           float* y, int ldy, bool first, const int32_t* even, const int32_t* odd) {
  const int8_t* q[MR];
  const float* d4[MR];
  const float* e[MR];
  __m512 acc[MR][2];
  for (int m = 0; m < MR; ++m) {
    q[m] = a.q8 + int64_t(idx[m]) * a.ld;
    d4[m] = a.d4 + int64_t(idx[m]) * (a.ld / 8);
    e[m] = a.e + int64_t(idx[m]) * (a.ld / 32);
    for (int s = 0; s < 2; ++s)
      acc[m][s] = first ? _mm512_setzero_ps() : _mm512_loadu_ps(y + int64_t(m) * ldy + 16 * s);
  }
  for (int gl = 0; gl < ng; ++gl) {
    const int g = g0 + gl;
    __m512i sum[MR][2];
    for (int m = 0; m < MR; ++m) sum[m][0] = sum[m][1] = _mm512_setzero_si512();
    const uint8_t* wg = wq + int64_t(gl) * 1024;
    for (int c = 0; c < 8; ++c) {
      const __m512i w0 = _mm512_load_si512(wg + 64 * c), w1 = _mm512_load_si512(wg + 512 + 64 * c);
      const int off = c < 4 ? even[g] + 4 * c : odd[g] + 4 * (c - 4);
      for (int m = 0; m < MR; ++m) {
        int32_t chunk;
        std::memcpy(&chunk, q[m] + off, 4);
        const __m512i xb = _mm512_set1_epi32(chunk);
        if constexpr (kVnni) {
          sum[m][0] = _mm512_dpbusd_epi32(sum[m][0], w0, xb);
          sum[m][1] = _mm512_dpbusd_epi32(sum[m][1], w1, xb);
        } else {  // int16 sums: 8 chunks of 2 products of at most 15 * 127 fit
          sum[m][0] = _mm512_add_epi16(sum[m][0], _mm512_maddubs_epi16(w0, xb));
          sum[m][1] = _mm512_add_epi16(sum[m][1], _mm512_maddubs_epi16(w1, xb));
        }
      }
    }
    for (int s = 0; s < 2; ++s) {
      const __m512 wsv = _mm512_load_ps(ws + gl * 32 + 16 * s);
      for (int m = 0; m < MR; ++m) {
        const __m512i s32 = kVnni ? sum[m][s] : _mm512_madd_epi16(sum[m][s], _mm512_set1_epi16(1));
        acc[m][s] = _mm512_fmadd_ps(_mm512_cvtepi32_ps(s32), _mm512_mul_ps(wsv, _mm512_set1_ps(d4[m][4 * g])), acc[m][s]);
        acc[m][s] = _mm512_fnmadd_ps(wsv, _mm512_set1_ps(e[m][g]), acc[m][s]);
      }
    }
  }
  for (int m = 0; m < MR; ++m)
    for (int s = 0; s < 2; ++s) _mm512_storeu_ps(y + int64_t(m) * ldy + 16 * s, acc[m][s]);
}

void gemm_fast(const Int4Matrix& w, int r0, int r1, const Acts& a, const int32_t* idx, int M, float* y, int ldy,
               uint8_t* scratch) {
  const int G = w.cols / 32;
  uint8_t* wq = scratch;
  float* ws = reinterpret_cast<float*>(scratch + kGroups512 * 1024);
  int32_t* even = reinterpret_cast<int32_t*>(scratch + kGroups512 * (1024 + 128));
  int32_t* odd = even + G;
  group_offsets(G, even, odd);
  for (int r = r0; r < r1; r += 32)
    for (int g0 = 0; g0 < G; g0 += kGroups512) {
      const int ng = std::min(kGroups512, G - g0);
      unpack_fast_block<16, 32>(w, r, g0, ng, wq, ws);
      float* yr = y + (r - r0);
      int m = 0;
      for (; m + 4 <= M; m += 4) fast_tokens512<4>(wq, ws, g0, ng, a, idx + m, yr + int64_t(m) * ldy, ldy, g0 == 0, even, odd);
      for (; m < M; ++m) fast_tokens512<1>(wq, ws, g0, ng, a, idx + m, yr + int64_t(m) * ldy, ldy, g0 == 0, even, odd);
    }
}

// ---- GEMM, exact: fp32 weights [k][16 rows] x 2, 8 tokens x 32 rows of FMAs

constexpr int kExactGroups512 = 4;  // 2 x 128 k x 16 rows x 4 B = 16 KB

template <int MR>
inline void exact_tokens512(const float* wa, const float* wb, int g0, int ng, const Acts& a, const int32_t* idx,
                            float* y, int ldy, bool first, const int32_t* even, const int32_t* odd) {
  const float* x[MR];
  __m512 acc[MR][2];
  for (int m = 0; m < MR; ++m) {
    x[m] = a.f32 + int64_t(idx[m]) * a.ld;
    for (int s = 0; s < 2; ++s) acc[m][s] = first ? _mm512_setzero_ps() : _mm512_loadu_ps(y + int64_t(m) * ldy + 16 * s);
  }
  for (int gl = 0; gl < ng; ++gl) {
    const int g = g0 + gl;
    for (int k = 0; k < 32; ++k) {
      const __m512 w0 = _mm512_load_ps(wa + (int64_t(gl) * 32 + k) * 16);
      const __m512 w1 = _mm512_load_ps(wb + (int64_t(gl) * 32 + k) * 16);
      const int off = k < 16 ? even[g] + k : odd[g] + (k - 16);
      for (int m = 0; m < MR; ++m) {
        const __m512 xb = _mm512_set1_ps(x[m][off]);
        acc[m][0] = _mm512_fmadd_ps(w0, xb, acc[m][0]);
        acc[m][1] = _mm512_fmadd_ps(w1, xb, acc[m][1]);
      }
    }
  }
  for (int m = 0; m < MR; ++m)
    for (int s = 0; s < 2; ++s) _mm512_storeu_ps(y + int64_t(m) * ldy + 16 * s, acc[m][s]);
}

void gemm_exact(const Int4Matrix& w, int r0, int r1, const Acts& a, const int32_t* idx, int M, float* y, int ldy,
                uint8_t* scratch) {
  const int G = w.cols / 32;
  float* wa = reinterpret_cast<float*>(scratch);
  float* wb = wa + kExactGroups512 * 32 * 16;
  int32_t* even = reinterpret_cast<int32_t*>(wb + kExactGroups512 * 32 * 16);
  int32_t* odd = even + G;
  group_offsets(G, even, odd);
  for (int r = r0; r < r1; r += 32)
    for (int g0 = 0; g0 < G; g0 += kExactGroups512) {
      const int ng = std::min(kExactGroups512, G - g0);
      unpack_exact_block16(w, r, g0, ng, wa);
      unpack_exact_block16(w, r + 16, g0, ng, wb);
      float* yr = y + (r - r0);
      int m = 0;
      for (; m + 8 <= M; m += 8) exact_tokens512<8>(wa, wb, g0, ng, a, idx + m, yr + int64_t(m) * ldy, ldy, g0 == 0, even, odd);
      for (; m < M; ++m) exact_tokens512<1>(wa, wb, g0, ng, a, idx + m, yr + int64_t(m) * ldy, ldy, g0 == 0, even, odd);
    }
}
