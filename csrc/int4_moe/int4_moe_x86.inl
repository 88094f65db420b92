// x86 helpers shared by the AVX2, AVX-512 and AMX kernel files (each includes it inside its own
// anonymous namespace after defining P, so every copy is compiled with that file's flags). Only
// AVX2 instructions here: the unpackers of the GEMM paths (weights -> L1-resident blocks).

inline float hsum(__m256 v) {
  __m128 s = _mm_add_ps(_mm256_castps256_ps128(v), _mm256_extractf128_ps(v, 1));
  s = _mm_add_ps(s, _mm_movehl_ps(s, s));
  s = _mm_add_ss(s, _mm_movehdup_ps(s));
  return _mm_cvtss_f32(s);
}

// dot((u - 8), q) of one single-group block ([16 evens | 16 odds] in k-order): the tail groups.
inline int32_t group_dot_q8_sse(const uint8_t* w16, const int8_t* q, const int32_t* c4) {
  const __m128i m4 = _mm_set1_epi8(0x0f);
  const __m128i wv = _mm_loadu_si128(reinterpret_cast<const __m128i*>(w16));
  const __m128i lo = _mm_and_si128(wv, m4), hi = _mm_and_si128(_mm_srli_epi16(wv, 4), m4);
  const __m128i s16 = _mm_add_epi16(_mm_maddubs_epi16(lo, _mm_loadu_si128(reinterpret_cast<const __m128i*>(q))),
                                    _mm_maddubs_epi16(hi, _mm_loadu_si128(reinterpret_cast<const __m128i*>(q + 16))));
  const __m128i s32 = _mm_sub_epi32(_mm_madd_epi16(s16, _mm_set1_epi16(1)),
                                    _mm_loadu_si128(reinterpret_cast<const __m128i*>(c4)));
  alignas(16) int32_t l[4];
  _mm_store_si128(reinterpret_cast<__m128i*>(l), s32);
  return l[0] + l[1] + l[2] + l[3];
}

// Column positions, in k-order(P), of the evens and odds of each group of a row of G groups.
void group_offsets(int G, int32_t* even, int32_t* odd) {
  for_each_block(G, P, [&](int g0, int p) {
    for (int j = 0; j < p; ++j) {
      even[g0 + j] = 32 * g0 + 16 * j;
      odd[g0 + j] = 32 * g0 + 16 * p + 16 * j;
    }
  });
}

inline void transpose8x8_epi32(__m256i* v) {
  const __m256i t0 = _mm256_unpacklo_epi32(v[0], v[1]), t1 = _mm256_unpackhi_epi32(v[0], v[1]);
  const __m256i t2 = _mm256_unpacklo_epi32(v[2], v[3]), t3 = _mm256_unpackhi_epi32(v[2], v[3]);
  const __m256i t4 = _mm256_unpacklo_epi32(v[4], v[5]), t5 = _mm256_unpackhi_epi32(v[4], v[5]);
  const __m256i t6 = _mm256_unpacklo_epi32(v[6], v[7]), t7 = _mm256_unpackhi_epi32(v[6], v[7]);
  const __m256i u0 = _mm256_unpacklo_epi64(t0, t2), u1 = _mm256_unpackhi_epi64(t0, t2);
  const __m256i u2 = _mm256_unpacklo_epi64(t1, t3), u3 = _mm256_unpackhi_epi64(t1, t3);
  const __m256i u4 = _mm256_unpacklo_epi64(t4, t6), u5 = _mm256_unpackhi_epi64(t4, t6);
  const __m256i u6 = _mm256_unpacklo_epi64(t5, t7), u7 = _mm256_unpackhi_epi64(t5, t7);
  v[0] = _mm256_permute2x128_si256(u0, u4, 0x20);
  v[1] = _mm256_permute2x128_si256(u1, u5, 0x20);
  v[2] = _mm256_permute2x128_si256(u2, u6, 0x20);
  v[3] = _mm256_permute2x128_si256(u3, u7, 0x20);
  v[4] = _mm256_permute2x128_si256(u0, u4, 0x31);
  v[5] = _mm256_permute2x128_si256(u1, u5, 0x31);
  v[6] = _mm256_permute2x128_si256(u2, u6, 0x31);
  v[7] = _mm256_permute2x128_si256(u3, u7, 0x31);
}

// Group g of 8 rows starting at `w0` (row stride rb bytes) -> per row [16 evens | 16 odds] as u8.
inline void unpack_group_rows(const uint8_t* w0, int64_t rb, int g, __m256i* v) {
  const __m128i m4 = _mm_set1_epi8(0x0f);
  for (int i = 0; i < 8; ++i) {
    const __m128i b = _mm_loadu_si128(reinterpret_cast<const __m128i*>(w0 + i * rb + 16 * g));
    const __m128i lo = _mm_and_si128(b, m4), hi = _mm_and_si128(_mm_srli_epi16(b, 4), m4);
    v[i] = _mm256_inserti128_si256(_mm256_castsi128_si256(lo), hi, 1);
  }
}

// Fast GEMM block: rows [r, r + NROWS) x groups [g0, g0 + ng) -> wq, u8 in a VNNI-like layout
// [group][NROWS / RV vectors][8 chunks][RV rows][4 bytes] (chunk c = 4 consecutive k of the group's
// [16 evens | 16 odds]), so that one vector holds one chunk of RV rows; ws [group][NROWS] fp32.
template <int RV, int NROWS>
void unpack_fast_block(const Int4Matrix& w, int r, int g0, int ng, uint8_t* wq, float* ws) {
  const int G = w.cols / 32;
  const int64_t rb = w.cols / 2;
  for (int gl = 0; gl < ng; ++gl)
    for (int o = 0; o < NROWS / 8; ++o) {  // octets of rows
      __m256i v[8];
      unpack_group_rows(w.packed + int64_t(r + 8 * o) * rb, rb, g0 + gl, v);
      transpose8x8_epi32(v);  // v[c] = chunk c of the 8 rows
      uint8_t* dst = wq + int64_t(gl) * NROWS * 32 + (o / (RV / 8)) * RV * 32 + (o % (RV / 8)) * 32;
      for (int c = 0; c < 8; ++c) _mm256_store_si256(reinterpret_cast<__m256i*>(dst + RV * 4 * c), v[c]);
      for (int i = 0; i < 8; ++i) ws[gl * NROWS + 8 * o + i] = bf16_to_f32(w.scale[int64_t(r + 8 * o + i) * G + g0 + gl]);
    }
}

inline void transpose8x8_ps(__m256* v) {
  __m256i* vi = reinterpret_cast<__m256i*>(v);
  transpose8x8_epi32(vi);
}

// Block of 16 rows x ng groups -> wf [ng * 32 k (group k-order)][16 rows] fp32.
void unpack_exact_block16(const Int4Matrix& w, int r, int g0, int ng, float* wf) {
  const int G = w.cols / 32;
  const int64_t rb = w.cols / 2;
  const __m256i eight = _mm256_set1_epi8(8);
  for (int gl = 0; gl < ng; ++gl)
    for (int s = 0; s < 2; ++s) {
      __m256i v[8];
      unpack_group_rows(w.packed + int64_t(r + 8 * s) * rb, rb, g0 + gl, v);
      __m256 sc[8];
      for (int i = 0; i < 8; ++i) {
        v[i] = _mm256_sub_epi8(v[i], eight);
        sc[i] = _mm256_set1_ps(bf16_to_f32(w.scale[int64_t(r + 8 * s + i) * G + g0 + gl]));
      }
      for (int k8 = 0; k8 < 4; ++k8) {  // k in [8 * k8, 8 * k8 + 8) of the group
        __m256 f[8];
        for (int i = 0; i < 8; ++i) {
          const __m128i q8 = k8 < 2 ? _mm256_castsi256_si128(v[i]) : _mm256_extracti128_si256(v[i], 1);
          const __m128i part = (k8 & 1) ? _mm_srli_si128(q8, 8) : q8;
          f[i] = _mm256_mul_ps(_mm256_cvtepi32_ps(_mm256_cvtepi8_epi32(part)), sc[i]);
        }
        transpose8x8_ps(f);  // f[k] = the 8 rows at k
        for (int k = 0; k < 8; ++k) _mm256_store_ps(wf + (int64_t(gl) * 32 + 8 * k8 + k) * 16 + 8 * s, f[k]);
      }
    }
}

