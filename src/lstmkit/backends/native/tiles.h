// Register tiles for the per-step recurrent products, float32 on AVX-512 CPUs.
//
// Each step of an LSTM multiplies a few rows (the batch) by the same weight W_hh, T times.
// BLAS treats every step as a new, unknown GEMM: it packs its operands again and, on AMD
// CPUs, MKL runs its AVX2 code (half the FMA width the core has). Here the weight is packed
// once per call into panels laid out for the inner loop, and one tile computes up to kMaxRows
// batch rows by kCols = 64 columns with all 4 x kMaxRows accumulators in registers. The caller
// owns the columns of a tile, so it can finish them at once (the gate math, while they are
// in L1) instead of in a second pass over the whole (B, 4H) gate buffer.
//
// Panels (built by pack_gates / pack_units below):
//   forward : panel u holds units [16u, 16u+16) of all four gates, 16 per gate, so a
//             tile's 64 columns are i, f, g, o of the same 16 hidden units (K = P);
//   backward: panel u holds units [64u, 64u+64) of dG W_hh's output (K = 4H).
// Rows of a panel are k-major: panel[k * 64 + col]. Units past H are zero columns.
#pragma once

#include <algorithm>
#include <cstdint>
#include <cstring>

namespace tiles {

#if defined(__AVX512F__)
constexpr bool kAvailable = true;
#else
constexpr bool kAvailable = false;  // 512-bit vectors would be split and spill: use BLAS
#endif

// bfloat16 tiles (inference): operands as pairs of bfloat16 along K packed in 32 bits, one
// vdpbf16ps per 16 columns adds both products of a pair to a float32 accumulator, twice the
// multiply-adds of an FMA (486 against 265 GFLOP/s per thread on this Zen 5). The float32
// panels and packing serve them unchanged: a pair is moved as one 32-bit element.
#if defined(__AVX512F__) && defined(__AVX512BF16__)
#include <immintrin.h>
constexpr bool kBf16 = true;
#else
constexpr bool kBf16 = false;
#endif

constexpr int kCols = 64;    // columns of a tile: four 16-float vectors
constexpr int kMaxRows = 6;  // 24 accumulators + 4 weight vectors + 1 broadcast of 32 registers
constexpr int kGateUnits = kCols / 4;  // hidden units per forward panel

typedef float v16 __attribute__((vector_size(64)));

inline v16 load(const float* p) {
  v16 v;
  std::memcpy(&v, p, sizeof v);
  return v;
}

// out[r * ldo + 0:64] = init(r) + sum_k a(r, k) panel[k, 0:64] for r < R, where a(r, k) =
// a[r * lda + k], or a[k * lda + r] with AT (A stored transposed: the weight gradients' dG^T),
// and init(r) = init[r * ldi + 0:64] (ldi 0: one row for all, a bias) or zero without init.
template <int R, bool AT = false, bool BF = false>
inline void tile(int K, const float* __restrict a, int lda, const float* __restrict panel,
                 float* out, int ldo = kCols, const float* init = nullptr, int ldi = 0) {
  v16 acc[R][4];
  for (int r = 0; r < R; ++r)
    for (int q = 0; q < 4; ++q) acc[r][q] = init ? load(init + (int64_t)r * ldi + q * 16) : v16{};
  for (int k = 0; k < K; ++k) {
    const float* w = panel + (int64_t)k * kCols;
    const v16 w0 = load(w), w1 = load(w + 16), w2 = load(w + 32), w3 = load(w + 48);
    for (int r = 0; r < R; ++r) {
      const int64_t at = AT ? (int64_t)k * lda + r : (int64_t)r * lda + k;
      if constexpr (BF) {  // a[at] and the panel's elements are pairs of bfloat16
#if defined(__AVX512F__) && defined(__AVX512BF16__)
        int32_t pair;
        std::memcpy(&pair, a + at, 4);
        const __m512bh x = (__m512bh)_mm512_set1_epi32(pair);
        acc[r][0] = (v16)_mm512_dpbf16_ps((__m512)acc[r][0], x, (__m512bh)w0);
        acc[r][1] = (v16)_mm512_dpbf16_ps((__m512)acc[r][1], x, (__m512bh)w1);
        acc[r][2] = (v16)_mm512_dpbf16_ps((__m512)acc[r][2], x, (__m512bh)w2);
        acc[r][3] = (v16)_mm512_dpbf16_ps((__m512)acc[r][3], x, (__m512bh)w3);
#endif
      } else {
        const v16 x = v16{} + a[at];  // one broadcast, feeds four FMAs
        acc[r][0] += x * w0;
        acc[r][1] += x * w1;
        acc[r][2] += x * w2;
        acc[r][3] += x * w3;
      }
    }
  }
  for (int r = 0; r < R; ++r)
    for (int q = 0; q < 4; ++q) std::memcpy(out + (int64_t)r * ldo + q * 16, &acc[r][q], 64);
}

// The tile for R rows (0 < R <= kMaxRows), chosen at run time.
template <bool AT = false, bool BF = false>
inline void tile_rows(int R, int K, const float* a, int lda, const float* panel, float* out,
                      int ldo = kCols, const float* init = nullptr, int ldi = 0) {
  switch (R) {
    case 1: return tile<1, AT, BF>(K, a, lda, panel, out, ldo, init, ldi);
    case 2: return tile<2, AT, BF>(K, a, lda, panel, out, ldo, init, ldi);
    case 3: return tile<3, AT, BF>(K, a, lda, panel, out, ldo, init, ldi);
    case 4: return tile<4, AT, BF>(K, a, lda, panel, out, ldo, init, ldi);
    case 5: return tile<5, AT, BF>(K, a, lda, panel, out, ldo, init, ldi);
    default: return tile<6, AT, BF>(K, a, lda, panel, out, ldo, init, ldi);
  }
}

// Round-to-nearest-even float32 -> bfloat16 bits (finite values; a NaN stays a NaN).
inline uint16_t to_bf16(float f) {
  uint32_t u;
  std::memcpy(&u, &f, 4);
  if ((u & 0x7fffffffu) > 0x7f800000u) return (uint16_t)((u >> 16) | 0x40);
  return (uint16_t)((u + 0x7fffu + ((u >> 16) & 1u)) >> 16);
}

inline int gate_panels(int H) { return (H + kGateUnits - 1) / kGateUnits; }
inline int unit_panels(int P) { return (P + kCols - 1) / kCols; }

// panel[k, c] = src[c][k] for k < K, c < 64 (a null src[c]: zeros): a transpose by 16 x 64
// blocks, so each source row is read a whole cache line at a time.
inline void transpose_in(const float* const* src, int K, float* panel) {
  alignas(64) float blk[kCols][16];
  for (int k0 = 0; k0 < K; k0 += 16) {
    const int kd = std::min(16, K - k0);
    for (int c = 0; c < kCols; ++c) {
      if (src[c] && kd == 16) {
        std::memcpy(blk[c], src[c] + k0, sizeof blk[c]);
      } else {
        for (int k = 0; k < 16; ++k) blk[c][k] = src[c] && k < kd ? src[c][k0 + k] : 0.0f;
      }
    }
    for (int k = 0; k < kd; ++k) {
      float* dst = panel + (int64_t)(k0 + k) * kCols;
      for (int c = 0; c < kCols; ++c) dst[c] = blk[c][k];
    }
  }
}

// Forward panel u from w_hh (4H, P): row k, column q*16 + l = w_hh[q*H + 16u + l, k].
inline void pack_gates(const float* w_hh, int H, int P, int u, float* out) {
  const float* src[kCols];
  for (int c = 0; c < kCols; ++c) {
    const int j = u * kGateUnits + c % kGateUnits;
    src[c] = j < H ? w_hh + ((int64_t)(c / kGateUnits) * H + j) * P : nullptr;
  }
  transpose_in(src, P, out + (int64_t)u * P * kCols);
}

// Backward panel u from w_hh (4H, P): row k, column l = w_hh[k, 64u + l].
inline void pack_units(const float* w_hh, int H, int P, int u, float* out) {
  const int G = 4 * H;
  {
    float* panel = out + (int64_t)u * G * kCols;
    const int j0 = u * kCols, w = std::min(kCols, P - j0);
    for (int k = 0; k < G; ++k) {
      float* dst = panel + (int64_t)k * kCols;
      std::memcpy(dst, w_hh + (int64_t)k * P + j0, sizeof(float) * w);
      std::fill(dst + w, dst + kCols, 0.0f);
    }
  }
}

// Rows [0, B) cut into near-equal blocks of at most kMaxRows; block b is [start(b), start(b+1)).
struct RowBlocks {
  int B, n;
  explicit RowBlocks(int B_) : B(B_), n((B_ + kMaxRows - 1) / kMaxRows) {}
  int start(int b) const { return (int)((int64_t)b * B / n); }
};

// The items [lo, hi) of `items` that thread `tid` of `nt` takes: contiguous, so a thread
// walks its panels in order and shares at most one with its neighbour.
inline void share(int items, int tid, int nt, int& lo, int& hi) {
  lo = (int)((int64_t)items * tid / nt);
  hi = (int)((int64_t)items * (tid + 1) / nt);
}

// ---- A general product C = A B (+ bias) on the same tiles ----------------------------------
// For the big products outside the time loop (the input projection, the weight and input
// gradients), which BLAS would run at AVX2 width on AMD CPUs. B is packed into 64-column
// panels cut into blocks of kDepth rows (panel[kb][u][k][64]); C is computed in chunks of
// kChunk rows, each chunk k-block by k-block, so the chunk's rows of A stay in L2 and the
// panel block in L1 while the tiles sweep them.
constexpr int kDepth = 128;   // rows of B per block: a 32 KB panel block, L1-resident
constexpr int kChunk = 192;   // rows of A per chunk: 96 KB of A per block, L2-resident
constexpr int kGroup = 8;     // panels whose chunk of C (192 x 512: 384 KB) stays in L2

// Rows [k0, k0 + kDepth) of B (K, N), element (k, n) at b[k * sk + n * sn], packed for
// mm_block below (the caller walks k0 over the blocks, in parallel if it likes).
inline void pack_b(const float* b, int64_t sk, int64_t sn, int K, int N, int k0, float* out) {
  const int np = (N + kCols - 1) / kCols;
  {
    const int kd = std::min(kDepth, K - k0);
    for (int u = 0; u < np; ++u) {
      float* panel = out + (int64_t)k0 * np * kCols + (int64_t)u * kd * kCols;
      const int n0 = u * kCols, w = std::min(kCols, N - n0);
      if (sk == 1) {  // B stored transposed (W^T): its columns are contiguous rows
        const float* src[kCols];
        for (int c = 0; c < kCols; ++c) src[c] = c < w ? b + (int64_t)(n0 + c) * sn + k0 : nullptr;
        transpose_in(src, kd, panel);
        continue;
      }
      for (int k = 0; k < kd; ++k) {
        float* dst = panel + (int64_t)k * kCols;
        const float* src = b + (int64_t)(k0 + k) * sk + (int64_t)n0 * sn;
        for (int l = 0; l < w; ++l) dst[l] = src[l * sn];
        std::fill(dst + w, dst + kCols, 0.0f);
      }
    }
  }
}

// Rows [m0, m1) of C (M, N) (ldc N) = A B (+ bias; with acc, C += A B): A (M, K) row-major
// (lda) or, with AT, stored transposed (a(m, k) = a[k * lda + m]); packed from pack_b;
// panels [u0, u1).
template <bool AT, bool BF = false>
void mm_block(const float* a, int lda, const float* packed, const float* bias, float* c, int K,
              int N, int m0, int m1, int u0, int u1, bool acc = false) {
  const int np = (N + kCols - 1) / kCols;
  alignas(64) float out[kMaxRows * kCols];
  for (int g0 = u0; g0 < u1; g0 += kGroup)  // a block of C that stays in L2 over every k block
  for (int k0 = 0; k0 < K; k0 += kDepth) {
    const int kd = std::min(kDepth, K - k0);
    for (int u = g0; u < std::min(u1, g0 + kGroup); ++u) {
      const float* panel = packed + (int64_t)k0 * np * kCols + (int64_t)u * kd * kCols;
      const int n0 = u * kCols, w = std::min(kCols, N - n0);
      for (int r0 = m0; r0 < m1; r0 += kMaxRows) {
        const int R = std::min(kMaxRows, m1 - r0);
        const float* a0 = AT ? a + (int64_t)k0 * lda + r0 : a + (int64_t)r0 * lda + k0;
        float* c0 = c + (int64_t)r0 * N + n0;
        if (w == kCols) {  // a whole panel: the tile starts from C (or the bias) and stores to C
          const bool more = k0 > 0 || acc;
          tile_rows<AT, BF>(R, kd, a0, lda, panel, c0, N, more ? c0 : bias ? bias + n0 : nullptr,
                            more ? N : 0);
          continue;
        }
        tile_rows<AT, BF>(R, kd, a0, lda, panel, out);
        for (int r = 0; r < R; ++r) {
          float* cr = c0 + (int64_t)r * N;
          const float* o = out + r * kCols;
          if (k0 > 0 || acc) {
            for (int l = 0; l < w; ++l) cr[l] += o[l];
          } else if (bias) {
            for (int l = 0; l < w; ++l) cr[l] = o[l] + bias[n0 + l];
          } else {
            std::memcpy(cr, o, sizeof(float) * w);
          }
        }
      }
    }
  }
}

}  // namespace tiles
