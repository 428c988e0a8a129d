// The native CPU backend: the LSTM forward and backward recurrences as C++ loops.
//
// Only the per-step work lives here (see lstmkit/backends/_bptt.py for the frame and the
// buffer layout), plus the big products the frame asks for (mm_packed). Two ways to run a
// step: float32 on AVX-512 CPUs, register tiles over weights packed once per call with the
// gate math in each tile's epilogue (tiles.h, "Tiled steps" below); otherwise one GEMM per
// step straight into BLAS (or the small-batch loops) and the gate math as plain loops over
// contiguous arrays that the compiler vectorises. Per step there is no tensor creation and no
// dispatcher call, which is what dominates at small hidden sizes and batches.
//
// Shapes: T time, B batch, H hidden, P projected (= H without projection), G = 4H.
// Gate order i, f, g, o. All tensors are contiguous, time-major, float or double.

#include <ATen/EmptyTensor.h>
#include <c10/core/CPUAllocator.h>
#include <torch/extension.h>

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <cstring>
#include <cstdlib>
#include <mutex>
#include <new>
#include <unordered_map>
#include <vector>

#include <omp.h>

#include "tiles.h"

// BLAS from the libraries torch already loads (MKL on x86 wheels). Weak, so that a torch
// built without them still loads this module and falls back to at::mm_out.
extern "C" {
void sgemm_(const char*, const char*, const int*, const int*, const int*, const float*,
            const float*, const int*, const float*, const int*, const float*, float*,
            const int*) __attribute__((weak));
void dgemm_(const char*, const char*, const int*, const int*, const int*, const double*,
            const double*, const int*, const double*, const int*, const double*, double*,
            const int*) __attribute__((weak));
void sgemv_(const char*, const int*, const int*, const float*, const float*, const int*,
            const float*, const int*, const float*, float*, const int*) __attribute__((weak));
void dgemv_(const char*, const int*, const int*, const double*, const double*, const int*,
            const double*, const int*, const double*, double*, const int*) __attribute__((weak));
}

namespace {

// Row-major C(M, N) = op(A) op(B) + beta C, where op(A) is (M, K) and op(B) is (K, N);
// ta / tb mean A / B are stored transposed. BLAS is column-major, so compute C^T = op(B)^T
// op(A)^T, which is the same memory read the other way.
template <typename T>
void gemm(bool ta, bool tb, int M, int N, int K, const T* A, const T* B, T beta, T* C) {
  const int lda = ta ? M : K, ldb = tb ? K : N, ldc = N;
  const char opa = ta ? 'T' : 'N', opb = tb ? 'T' : 'N';
  const T one = 1;
  if (M == 1 && !ta) {  // one row (batch 1): a GEMV, which BLAS runs faster than a 1-row GEMM
    // C^T = op(B)^T a^T; B read column-major is B^T, so tb=true wants it transposed back.
    const char op = tb ? 'T' : 'N';
    const int m = tb ? K : N, n = tb ? N : K, inc = 1;
    if constexpr (std::is_same_v<T, float>) {
      if (sgemv_) return sgemv_(&op, &m, &n, &one, B, &m, A, &inc, &beta, C, &inc);
    } else {
      if (dgemv_) return dgemv_(&op, &m, &n, &one, B, &m, A, &inc, &beta, C, &inc);
    }
  }
  if constexpr (std::is_same_v<T, float>) {
    if (sgemm_) {
      sgemm_(&opb, &opa, &N, &M, &K, &one, B, &ldb, A, &lda, &beta, C, &ldc);
      return;
    }
  } else {
    if (dgemm_) {
      dgemm_(&opb, &opa, &N, &M, &K, &one, B, &ldb, A, &lda, &beta, C, &ldc);
      return;
    }
  }
  auto opt = at::TensorOptions().dtype(c10::CppTypeToScalarType<T>::value);
  auto a = at::from_blob(const_cast<T*>(A), {ta ? K : M, ta ? M : K}, opt);
  auto b = at::from_blob(const_cast<T*>(B), {tb ? N : K, tb ? K : N}, opt);
  auto c = at::from_blob(C, {M, N}, opt);
  auto prod = at::mm(ta ? a.t() : a, tb ? b.t() : b);
  if (beta == T(0)) {
    c.copy_(prod);
  } else {
    c.add_(prod);
  }
}

// ---- Small-batch recurrent products ------------------------------------------------------
// At B = 1..4 a step is a matrix-vector product bound by reading the weights (4H x P; 16 MB
// at H = 1024, from L3). MKL's sgemv reads them at about half the bandwidth oneDNN reaches on
// AMD, so these two loops read W_hh in its stored layout (no packing: the forward wants dot
// products along its rows, the backward axpys of its rows, both contiguous) with explicit
// vectors (GCC/Clang vector extensions: 512-bit, split by the compiler where narrower), and
// split the rows (forward) or columns (backward) over threads when the product is big enough
// to pay for waking them. Summation order differs from BLAS; both are exact to rounding.
int g_small_b = 16;           // cap on the batch that takes these loops (set_tuning)
int64_t g_par_min = 1 << 16;  // fewest multiply-adds per step worth a parallel_for (H=128, B=1)
bool g_by_size = true;        // false: every batch up to g_small_b takes them (tests)

template <typename T>
struct Vec {
  static constexpr int L = 64 / sizeof(T);
  typedef T type __attribute__((vector_size(64)));
  static type load(const T* p) {
    type v;
    std::memcpy(&v, p, sizeof v);
    return v;
  }
  static void store(T* p, type v) { std::memcpy(p, &v, sizeof v); }
  // Horizontal sum by halving (512 -> 256 -> 128 bits), which compiles to lane extracts;
  // indexing the 512-bit vector lane by lane instead spills it and dominates at small K.
  static T sum(type v) {
    typedef T half __attribute__((vector_size(32)));
    typedef T quarter __attribute__((vector_size(16)));
    half lo, hi;
    std::memcpy(&lo, &v, 32);
    std::memcpy(&hi, reinterpret_cast<const char*>(&v) + 32, 32);
    const half a = lo + hi;
    quarter l2, h2;
    std::memcpy(&l2, &a, 16);
    std::memcpy(&h2, reinterpret_cast<const char*>(&a) + 16, 16);
    const quarter b = l2 + h2;
    T s = 0;
    for (int l = 0; l < int(16 / sizeof(T)); ++l) s += b[l];
    return s;
  }
};

// 4 rows of W against NB rows of x: sums s[r][b] = dot(W[j + r, :], x[b, :]). Each loaded
// vector of W feeds NB FMAs and each of x 4, so the loads no longer bound it at B > 1; at
// NB = 1 two vectors per row are in flight to cover the FMA latency.
template <typename T, int NB>
void dot_block(int K, const T* x, const T* w0, T (&s)[4][NB]) {
  using V = Vec<T>;
  using v = typename V::type;
  constexpr int L = V::L, U = NB == 1 ? 2 : 1;
  v a[U][4][NB] = {};
  int k = 0;
  for (; k + U * L <= K; k += U * L)
    for (int u = 0; u < U; ++u) {
      v xv[NB];
      for (int b = 0; b < NB; ++b) xv[b] = V::load(x + (int64_t)b * K + k + u * L);
      for (int r = 0; r < 4; ++r) {
        v wv = V::load(w0 + (int64_t)r * K + k + u * L);
        // Pin wv to a register: otherwise GCC folds the load into each of the NB FMAs, and
        // loads, not FMAs, become the bound.
#if defined(__x86_64__) && defined(__GNUC__)
        __asm__("" : "+v"(wv));
#endif
        for (int b = 0; b < NB; ++b) a[u][r][b] += wv * xv[b];
      }
    }
  for (int r = 0; r < 4; ++r)
    for (int b = 0; b < NB; ++b) {
      v t = a[0][r][b];
      for (int u = 1; u < U; ++u) t += a[u][r][b];
      T acc = V::sum(t);
      for (int kk = k; kk < K; ++kk) acc += w0[(int64_t)r * K + kk] * x[(int64_t)b * K + kk];
      s[r][b] = acc;
    }
}

template <typename T, int NB>
void dot_group(int K, const T* x, const T* w0, T* y, int ldy, bool acc) {
  T s[4][NB];
  dot_block<T, NB>(K, x, w0, s);
  for (int b = 0; b < NB; ++b)
    for (int r = 0; r < 4; ++r) {
      T* yb = y + (int64_t)b * ldy + r;
      *yb = acc ? *yb + s[r][b] : s[r][b];
    }
}

// y[b, j] (+)= dot(W[j, :], x[b, :]) for rows j in [j0, j1): dot products along W's
// contiguous rows, 4 rows by up to 4 batch rows at a time.
template <typename T>
void dot_rows(int n, int K, const T* x, const T* W, T* y, int ldy, bool acc, int j0, int j1) {
  int j = j0;
  for (; j + 4 <= j1; j += 4) {
    const T* w0 = W + (int64_t)j * K;
    for (int b = 0; b < n; b += 4) {
      const T* xb = x + (int64_t)b * K;
      T* yb = y + (int64_t)b * ldy + j;
      switch (std::min(4, n - b)) {
        case 4: dot_group<T, 4>(K, xb, w0, yb, ldy, acc); break;
        case 3: dot_group<T, 3>(K, xb, w0, yb, ldy, acc); break;
        case 2: dot_group<T, 2>(K, xb, w0, yb, ldy, acc); break;
        default: dot_group<T, 1>(K, xb, w0, yb, ldy, acc);
      }
    }
  }
  for (; j < j1; ++j) {  // leftover rows (M not a multiple of 4: only with a projection)
    const T* w0 = W + (int64_t)j * K;
    for (int b = 0; b < n; ++b) {
      T s = 0;
      for (int k = 0; k < K; ++k) s += w0[k] * x[(int64_t)b * K + k];
      y[(int64_t)b * ldy + j] = acc ? y[(int64_t)b * ldy + j] + s : s;
    }
  }
}

// y[b, k] = sum_j d[b, j] W[j, k] for columns k in [k0, k1): 4 rows of W scaled and added
// per pass over the (L1-resident) slice of y.
template <typename T>
void axpy_rows(int n, int M, int N, const T* d, const T* W, T* y, int k0, int k1) {
  using V = Vec<T>;
  using v = typename V::type;
  constexpr int L = V::L;
  for (int b = 0; b < n; ++b) std::fill(y + (int64_t)b * N + k0, y + (int64_t)b * N + k1, T(0));
  int j = 0;
  for (; j < M; j += 4) {
    const int r = std::min(4, M - j);
    const T* w0 = W + (int64_t)j * N;
    const T* w1 = r > 1 ? w0 + N : w0;  // short group: reuse row 0 with a zero weight
    const T* w2 = r > 2 ? w0 + 2 * N : w0;
    const T* w3 = r > 3 ? w0 + 3 * N : w0;
    for (int b = 0; b < n; ++b) {
      const T* db = d + (int64_t)b * M + j;
      const T e0 = db[0], e1 = r > 1 ? db[1] : T(0), e2 = r > 2 ? db[2] : T(0);
      const T e3 = r > 3 ? db[3] : T(0);
      T* yb = y + (int64_t)b * N;
      int k = k0;
      for (; k + L <= k1; k += L) {
        v s = V::load(yb + k);
        s += V::load(w0 + k) * e0 + V::load(w1 + k) * e1;
        s += V::load(w2 + k) * e2 + V::load(w3 + k) * e3;
        V::store(yb + k, s);
      }
      for (; k < k1; ++k) yb[k] += w0[k] * e0 + w1[k] * e1 + w2[k] * e2 + w3[k] * e3;
    }
  }
}

// Whether n batch rows against a weight of this many elements take the loops above. They
// win while reading the weight dominates, which lasts to more rows the bigger it is
// (measured per step, fp32, 2 threads: H=1024 to B=16, H=256 to B=8, H=64 to B=2).
inline bool small_batch(int n, int64_t weights) {
  const int by_size = weights >= (1 << 20)   ? 16
                      : weights >= (1 << 18) ? 8
                      : weights >= (1 << 16) ? 4
                                             : 2;
  const int most = g_by_size ? by_size : g_small_b;
  return n <= std::min(most, g_small_b);
}

// Row-major y (n, M) (+)= x (n, K) W^T with W (M, K): the forward step's h W_hh^T.
template <typename T>
void small_nt(int n, int M, int K, const T* x, const T* W, T* y, bool acc) {
  const int64_t groups = (M + 3) / 4, work = (int64_t)n * M * K;
  const int64_t grain = work >= g_par_min ? 1 : groups;
  at::parallel_for(0, groups, grain, [&](int64_t g0, int64_t g1) {
    dot_rows<T>(n, K, x, W, y, M, acc, g0 * 4, std::min<int64_t>(g1 * 4, M));
  });
}

// Row-major y (n, N) = d (n, M) W with W (M, N): the backward step's dG W_hh.
template <typename T>
void small_nn(int n, int M, int N, const T* d, const T* W, T* y) {
  constexpr int L = Vec<T>::L;
  const int64_t cols = (N + L - 1) / L, work = (int64_t)n * M * N;
  const int64_t grain = work >= g_par_min ? 1 : cols;
  at::parallel_for(0, cols, grain, [&](int64_t c0, int64_t c1) {
    axpy_rows<T>(n, M, N, d, W, y, c0 * L, std::min<int64_t>(c1 * L, N));
  });
}

// Row-major C(M, N) = A (M, K) B^T (+ C when accumulating), B (N, K): small batches above.
template <typename T>
void mm_nt(int M, int N, int K, const T* A, const T* B, T* C, bool acc) {
  if (small_batch(M, (int64_t)N * K)) return small_nt<T>(M, N, K, A, B, C, acc);
  gemm<T>(false, true, M, N, K, A, B, acc ? T(1) : T(0), C);
}

// Row-major C(M, N) = A (M, K) B, B (K, N).
template <typename T>
void mm_nn(int M, int N, int K, const T* A, const T* B, T* C) {
  if (small_batch(M, (int64_t)N * K)) return small_nn<T>(M, K, N, A, B, C);
  gemm<T>(false, false, M, N, K, A, B, T(0), C);
}

// exp for float as range reduction + polynomial, branch-free so that loops calling it
// vectorise (libm's expf does not without -ffast-math). Relative error ~1e-7.
inline float fast_exp(float x) {
  x = std::min(std::max(x, -87.0f), 88.0f);
  const float n = std::floor(x * 1.44269504088896341f + 0.5f);
  const float r = x - n * 0.693359375f + n * 2.12194440e-4f;  // x - n ln2, ln2 split in two
  float p = 1.0f / 5040;
  p = p * r + 1.0f / 720;
  p = p * r + 1.0f / 120;
  p = p * r + 1.0f / 24;
  p = p * r + 1.0f / 6;
  p = p * r + 0.5f;
  p = p * r + 1.0f;
  p = p * r + 1.0f;
  const int32_t bits = (static_cast<int32_t>(n) + 127) << 23;  // 2^n
  float scale;
  std::memcpy(&scale, &bits, sizeof scale);
  return p * scale;
}

// Double is the dtype of gradchecks, not of speed: use libm for full accuracy.
inline double fast_exp(double x) { return std::exp(x); }

template <typename T>
inline T sigmoid(T x) {
  return T(1) / (T(1) + fast_exp(-x));
}

template <typename T>
inline T tanh_(T x) {
  if constexpr (std::is_same_v<T, double>) {
    return std::tanh(x);
  } else {
    return T(2) / (T(1) + fast_exp(T(-2) * x)) - T(1);
  }
}

// n units of one row of the forward step: activate the gates in place, c' = f c + i g,
// tc = tanh(c'), hr = o tc (the h before projection). The gates i, f, g, o of unit j are
// g[j], g[H + j], g[2H + j], g[3H + j] (g may point into the middle of a row).
template <typename T>
void gates_forward(int n, int H, T* __restrict g, const T* __restrict c, T* __restrict c_new,
                   T* __restrict tc, T* __restrict hr) {
  T* __restrict gi = g;
  T* __restrict gf = g + H;
  T* __restrict gg = g + 2 * H;
  T* __restrict go = g + 3 * H;
  for (int j = 0; j < n; ++j) {
    const T i = sigmoid(gi[j]), f = sigmoid(gf[j]), z = tanh_(gg[j]), o = sigmoid(go[j]);
    gi[j] = i;
    gf[j] = f;
    gg[j] = z;
    go[j] = o;
    const T cn = f * c[j] + i * z;
    const T t = tanh_(cn);
    c_new[j] = cn;
    tc[j] = t;
    hr[j] = o * t;
  }
}

// n units of one row of the backward step: from dr = dL/d(o tanh c') and the carried dc,
// the pre-activation gate gradients dg, and dc for the previous step (in place). g and dg
// are laid out as in gates_forward.
template <typename T>
void gates_backward(int n, int H, const T* __restrict g, const T* __restrict c_prev,
                    const T* __restrict tc, const T* __restrict dr, T* __restrict dc,
                    T* __restrict dg) {
  const T* __restrict gi = g;
  const T* __restrict gf = g + H;
  const T* __restrict gg = g + 2 * H;
  const T* __restrict go = g + 3 * H;
  for (int j = 0; j < n; ++j) {
    const T i = gi[j], f = gf[j], z = gg[j], o = go[j], t = tc[j], d = dr[j];
    const T dcj = dc[j] + d * o * (T(1) - t * t);
    dg[j] = dcj * z * i * (T(1) - i);
    dg[H + j] = dcj * c_prev[j] * f * (T(1) - f);
    dg[2 * H + j] = dcj * i * (T(1) - z * z);
    dg[3 * H + j] = d * t * o * (T(1) - o);
    dc[j] = dcj * f;
  }
}

// Per step t: rows [0, n) hold every live sequence (rows past the last live one are skipped
// by the GEMMs); live(t, b) says whether step t exists for sequence b.
struct Steps {
  int T, B;
  bool reverse;
  const bool* mask;  // (T, B) or null: all live
  std::vector<int> rows;

  Steps(int T_, int B_, bool rev, const c10::optional<at::Tensor>& m)
      : T(T_), B(B_), reverse(rev), mask(m ? m->data_ptr<bool>() : nullptr), rows(T_, B_) {
    if (!mask) return;
    for (int t = 0; t < T; ++t) {
      int n = 0;
      for (int b = 0; b < B; ++b)
        if (mask[t * B + b]) n = b + 1;
      rows[t] = n;
    }
  }
  int time(int s) const { return reverse ? T - 1 - s : s; }     // step s of the loop
  int read(int t) const { return reverse ? t + 1 : t; }         // slot of the state read
  int write(int t) const { return reverse ? t : t + 1; }        // slot of the state written
  bool live(int t, int b) const { return !mask || mask[t * B + b]; }
};

template <typename T>
void forward_impl(T* xg, T* hbuf, T* cbuf, T* tc, T* r, const T* w_hh, const T* w_hr,
                  const Steps& st, int H, int P, bool save) {
  const int B = st.B, G = 4 * H;
  const bool proj = w_hr != nullptr;
  for (int s = 0; s < st.T; ++s) {
    const int t = st.time(s), n = st.rows[t];
    const T* hp = hbuf + (int64_t)st.read(t) * B * P;
    T* hn = hbuf + (int64_t)st.write(t) * B * P;
    // Training keeps every c; inference ping-pongs between two slots.
    const T* cp = cbuf + (int64_t)(save ? st.read(t) : s % 2) * B * H;
    T* cn = cbuf + (int64_t)(save ? st.write(t) : (s + 1) % 2) * B * H;
    T* tct = save ? tc + (int64_t)t * B * H : tc;  // inference: one (B, H) scratch
    T* rt = proj ? r + (int64_t)(save ? t : 0) * B * H : hn;
    T* g = xg + (int64_t)t * B * G;
    if (n > 0) mm_nt<T>(n, G, P, hp, w_hh, g, true);  // g += h W_hh^T
    for (int b = 0; b < B; ++b) {
      if (b < n && st.live(t, b)) {
        gates_forward(H, H, g + b * G, cp + b * H, cn + b * H, tct + b * H, rt + b * H);
      } else {  // no step t for this sequence: keep its state
        std::memcpy(cn + b * H, cp + b * H, sizeof(T) * H);
        if (proj) {
          std::fill(rt + b * H, rt + (b + 1) * H, T(0));  // finite, it meets zeros in dW_hr
        } else {
          std::memcpy(hn + b * P, hp + b * P, sizeof(T) * P);
        }
      }
    }
    if (proj) {
      if (n > 0) mm_nt<T>(n, P, H, rt, w_hr, hn, false);  // h = r W_hr^T
      for (int b = 0; b < B; ++b)
        if (!(b < n && st.live(t, b))) std::memcpy(hn + b * P, hp + b * P, sizeof(T) * P);
    }
  }
}

// dh += dout[t] on the live rows: out is constant zero on dead steps, so their gradient is
// dropped.
template <typename T>
void add_output_grad(const T* dout, T* dh, const Steps& st, int t, int n, int P) {
  const T* d = dout + (int64_t)t * st.B * P;
  for (int b = 0; b < n; ++b)
    if (st.live(t, b))
      for (int j = 0; j < P; ++j) dh[b * P + j] += d[b * P + j];
}

// Through the projection h = r W_hr^T at step t: keeps dh as dht[t] (zero on dead rows, for
// dW_hr after the loop) and returns dr = dh W_hr in dr_buf.
template <typename T>
const T* projection_backward(const T* dh, T* dht, const T* w_hr, const Steps& st, int t, int n,
                             int H, int P, T* dr_buf) {
  const int B = st.B;
  T* dhtt = dht + (int64_t)t * B * P;
  for (int b = 0; b < B; ++b) {
    if (b < n && st.live(t, b)) {
      std::memcpy(dhtt + b * P, dh + b * P, sizeof(T) * P);
    } else {
      std::fill(dhtt + b * P, dhtt + (b + 1) * P, T(0));
    }
  }
  if (n > 0) mm_nn<T>(n, H, P, dh, w_hr, dr_buf);  // dr = dh W_hr
  return dr_buf;
}

template <typename T>
void backward_impl(const T* dout, T* dh, T* dc, const T* gates, const T* cbuf, const T* tc,
                   T* dG, T* dht, const T* w_hh, const T* w_hr, const Steps& st, int H, int P,
                   T* dr_buf, T* dh_buf, const T* dcs) {
  const int B = st.B, G = 4 * H;
  const bool proj = w_hr != nullptr;
  for (int s = st.T - 1; s >= 0; --s) {
    const int t = st.time(s), n = st.rows[t];
    const T* g = gates + (int64_t)t * B * G;
    const T* cp = cbuf + (int64_t)st.read(t) * B * H;
    const T* tct = tc + (int64_t)t * B * H;
    T* dg = dG + (int64_t)t * B * G;
    if (dout) add_output_grad(dout, dh, st, t, n, P);
    if (dcs) add_output_grad(dcs, dc, st, t, n, H);  // the returned cell states' gradient
    const T* dr = proj ? projection_backward(dh, dht, w_hr, st, t, n, H, P, dr_buf) : dh;
    for (int b = 0; b < B; ++b) {
      if (b < n && st.live(t, b)) {
        gates_backward(H, H, g + b * G, cp + b * H, tct + b * H, dr + b * H, dc + b * H,
                       dg + b * G);
      } else {
        std::fill(dg + b * G, dg + (b + 1) * G, T(0));
      }
    }
    if (n == 0) continue;
    if (!st.mask) {
      mm_nn<T>(B, P, G, dg, w_hh, dh);  // dh = dG W_hh
    } else {
      mm_nn<T>(n, P, G, dg, w_hh, dh_buf);
      for (int b = 0; b < n; ++b)
        if (st.live(t, b)) std::memcpy(dh + b * P, dh_buf + b * P, sizeof(T) * P);
    }
  }
}

// ---- Tiled steps (float32, AVX-512, no projection; see tiles.h) ---------------------------
// The same recurrences as forward_impl / backward_impl, with the per-step product done by
// register tiles over weights packed once per call, and each tile's columns finished (gate
// math, state update) right after it. One parallel region spans the whole time loop: the
// threads split the tiles of a step and meet at a barrier before the next step, instead of
// a parallel region per step. Dead rows (lengths) are handled as in the loops above.

int g_tile_min = 1;  // the least batch that takes the tiles (set_tuning); 0: never

// Whether n batch rows take the tiles. A row or two against a big weight (H = 1024) is a
// matrix-vector product that the small-batch loops read faster (tiles win from B = 3 there,
// measured on one Zen 5 core); smaller weights take the tiles from one row.
bool tiles_for(int64_t n, int64_t weights) {
  if (!tiles::kAvailable || g_tile_min <= 0) return false;
  const int64_t least = g_by_size && weights >= (1 << 21) ? std::max(3, g_tile_min) : g_tile_min;
  return n >= least;
}

// Whether packing a weight of this many elements for the tiles pays over `rows` rows in all:
// one product of that many rows (`product`: the input projection; else mm_rows' dot
// products), or a forward time loop of T steps of `batch` rows (rows = T * batch; else the
// small-batch dot loops, or BLAS past them). Packing reads and rewrites the whole weight
// (1.4 ms for 16 MB here), which few rows do not win back: measured on this Zen 5, 2
// threads, the dot products win a 16 MB weight's projection below ~130 rows and a 1 MB one's
// below ~40; a time loop at H = 1024 below 64 rows (batch <= 8), at H <= 256 below ~32.
bool pack_pays(int64_t rows, int64_t batch, int64_t weights, bool product) {
  if (!g_by_size) return true;  // tests: the tiles from their least batch, whatever T is
  const bool big = weights >= (1 << 21);
  if (product) return rows >= (big ? 128 : 32);
  if (!small_batch(batch, weights)) return true;  // the step would be BLAS, slower than both
  return rows >= (big && batch <= 8 ? 64 : 32);
}

// Threads worth waking for a step of this many multiply-adds.
int step_threads(int64_t work) {
  return work >= g_par_min ? std::max(1, at::get_num_threads()) : 1;
}

// Rows [r0, r1) of one forward tile, columns = units [j0, j0 + nu) of all four gates.
// With bfloat16 weights (inference) the product reads h as bfloat16 (hbp, the step's input
// rounded once) and the tile writes each new h rounded beside the float32 one (hbn).
struct FwdStep {
  float *g, *cn, *tct, *hn;
  const float *cp, *hp;
  const uint16_t* hbp;
  uint16_t* hbn;
  int t, n, H;
};

void forward_tile(const FwdStep& f, const Steps& st, const float* panel, int r0, int r1, int j0,
                  float* out) {
  const int H = f.H, G = 4 * H, nu = std::min(tiles::kGateUnits, H - j0);
  const int prod = std::min(r1, f.n) - r0;
  if (prod > 0 && f.hbp) {  // pairs of bfloat16 along K, moved as 32-bit elements
    const float* hb = reinterpret_cast<const float*>(f.hbp + (int64_t)r0 * H);
    tiles::tile_rows<false, true>(prod, H / 2, hb, H / 2, panel, out);
  } else if (prod > 0) {
    tiles::tile_rows(prod, H, f.hp + (int64_t)r0 * H, H, panel, out);
  }
  for (int b = r0; b < r1; ++b) {
    const int64_t o = (int64_t)b * H + j0;
    if (b < f.n && st.live(f.t, b)) {
      float* gb = f.g + (int64_t)b * G + j0;
      const float* acc = out + (b - r0) * tiles::kCols;
      for (int q = 0; q < 4; ++q)
        for (int l = 0; l < nu; ++l) gb[q * H + l] += acc[q * tiles::kGateUnits + l];
      gates_forward(nu, H, gb, f.cp + o, f.cn + o, f.tct + o, f.hn + o);
      if (f.hbn)
        for (int l = 0; l < nu; ++l) f.hbn[o + l] = tiles::to_bf16(f.hn[o + l]);
    } else {  // no step t for this sequence: keep its state
      std::memcpy(f.cn + o, f.cp + o, sizeof(float) * nu);
      std::memcpy(f.hn + o, f.hp + o, sizeof(float) * nu);
      if (f.hbn) std::memcpy(f.hbn + o, f.hbp + o, sizeof(uint16_t) * nu);
    }
  }
}

// hb: null, or (bfloat16 panels, inference) two (B, H) bfloat16 buffers, the first holding h0
// rounded; steps read one and write the other in turn.
void forward_tiled(float* xg, float* hbuf, float* cbuf, float* tc, const float* packed,
                   const Steps& st, int H, bool save, uint16_t* hb = nullptr) {
  const int B = st.B, G = 4 * H;
  const tiles::RowBlocks rows(B);
  const int items = tiles::gate_panels(H) * rows.n;
#pragma omp parallel num_threads(step_threads((int64_t)B * G * H))
  {
    int lo, hi;
    tiles::share(items, omp_get_thread_num(), omp_get_num_threads(), lo, hi);
    alignas(64) float out[tiles::kMaxRows * tiles::kCols];
    for (int s = 0; s < st.T; ++s) {
      const int t = st.time(s);
      FwdStep f;
      f.t = t, f.n = st.rows[t], f.H = H;
      f.hp = hbuf + (int64_t)st.read(t) * B * H;
      f.hn = hbuf + (int64_t)st.write(t) * B * H;
      f.cp = cbuf + (int64_t)(save ? st.read(t) : s % 2) * B * H;
      f.cn = cbuf + (int64_t)(save ? st.write(t) : (s + 1) % 2) * B * H;
      f.tct = save ? tc + (int64_t)t * B * H : tc;
      f.g = xg + (int64_t)t * B * G;
      f.hbp = hb ? hb + (int64_t)(s % 2) * B * H : nullptr;
      f.hbn = hb ? hb + (int64_t)((s + 1) % 2) * B * H : nullptr;
      const int depth = hb ? H / 2 : H;  // rows of a panel: pairs of K with bfloat16
      for (int it = lo; it < hi; ++it) {
        const int u = it / rows.n, rb = it % rows.n;
        const float* panel = packed + (int64_t)u * depth * tiles::kCols;
        forward_tile(f, st, panel, rows.start(rb), rows.start(rb + 1), u * tiles::kGateUnits,
                     out);
      }
#pragma omp barrier
    }
  }
}

// One backward tile: units [j0, j0 + nu) of rows [r0, r1). First dh = dG[tp] W_hh on the rows
// live at tp (the step processed before, t + 1 in forward order), then, if t >= 0, the gate
// gradients of step t for these units.
struct BwdStep {
  const float *dgp, *g, *cp, *tct, *dout, *dcs;
  float *dg, *dh, *dc;
  int t, tp, n, np, H;
};

void backward_tile(const BwdStep& k, const Steps& st, const float* panel, int r0, int r1, int j0,
                   float* out) {
  const int H = k.H, G = 4 * H, nu = std::min(tiles::kCols, H - j0);
  const int prod = std::min(r1, k.np) - r0;
  if (prod > 0) tiles::tile_rows(prod, G, k.dgp + (int64_t)r0 * G, G, panel, out);
  for (int b = r0; b < r1; ++b) {
    const int64_t o = (int64_t)b * H + j0;
    float* dh = k.dh + o;
    if (b < k.np && st.live(k.tp, b)) std::memcpy(dh, out + (b - r0) * tiles::kCols, 4 * nu);
    if (k.t < 0) continue;
    float* dg = k.dg + (int64_t)b * G + j0;
    if (b < k.n && st.live(k.t, b)) {
      if (k.dout)
        for (int l = 0; l < nu; ++l) dh[l] += k.dout[o + l];
      if (k.dcs)
        for (int l = 0; l < nu; ++l) k.dc[o + l] += k.dcs[o + l];
      gates_backward(nu, H, k.g + (int64_t)b * G + j0, k.cp + o, k.tct + o, dh, k.dc + o, dg);
    } else {
      for (int q = 0; q < 4; ++q) std::fill(dg + q * H, dg + q * H + nu, 0.0f);
    }
  }
}

void backward_tiled(const float* dout, float* dh, float* dc, const float* gates,
                    const float* cbuf, const float* tc, float* dG, const float* packed,
                    const Steps& st, int H, const float* dcs) {
  const int B = st.B, G = 4 * H;
  const tiles::RowBlocks rows(B);
  const int items = tiles::unit_panels(H) * rows.n;
#pragma omp parallel num_threads(step_threads((int64_t)B * G * H))
  {
    int lo, hi;
    tiles::share(items, omp_get_thread_num(), omp_get_num_threads(), lo, hi);
    alignas(64) float out[tiles::kMaxRows * tiles::kCols];
    // s = -1 is the last product only: dh0 = dG[first step] W_hh.
    for (int s = st.T - 1; s >= -1; --s) {
      BwdStep k;
      k.H = H, k.dh = dh, k.dc = dc;
      k.t = s >= 0 ? st.time(s) : -1;
      k.tp = s + 1 < st.T ? st.time(s + 1) : -1;
      k.n = k.t >= 0 ? st.rows[k.t] : 0;
      k.np = k.tp >= 0 ? st.rows[k.tp] : 0;
      k.dgp = k.tp >= 0 ? dG + (int64_t)k.tp * B * G : nullptr;
      const int64_t tt = k.t >= 0 ? k.t : 0;
      k.g = gates + tt * B * G;
      k.dg = dG + tt * B * G;
      k.cp = cbuf + (int64_t)(k.t >= 0 ? st.read(k.t) : 0) * B * H;
      k.tct = tc + tt * B * H;
      k.dout = dout ? dout + tt * B * H : nullptr;
      k.dcs = dcs ? dcs + tt * B * H : nullptr;
      for (int it = lo; it < hi; ++it) {
        const int u = it / rows.n, rb = it % rows.n;
        const float* panel = packed + (int64_t)u * G * tiles::kCols;
        backward_tile(k, st, panel, rows.start(rb), rows.start(rb + 1), u * tiles::kCols, out);
      }
#pragma omp barrier
    }
  }
}

// Big results (gates, states, their gradients, products: T·B rows, megabytes each) come from
// a pool of blocks that earlier calls freed. A training loop asks for the same sizes every
// step, and fresh memory costs a page fault per 4 KB page on its first touch: 0.35 ms per MB
// measured on this project's VM (a 105 MB gate buffer took 41 ms to fill fresh, 5 ms to fill
// again), a third of a training step at hidden 256, batch 256. A tensor's block goes back to
// the pool when the tensor is freed (its deleter); the pool keeps at most kPoolKeep bytes of
// free blocks (the rest goes back to the system), reusable by exact size, and small results
// stay with torch's allocator. drop_pool() frees what it keeps. Tensors keep torch's
// allocator interface (PoolAllocator), so they resize and serialise as any other.
constexpr size_t kPoolMin = size_t(4) << 20;   // smaller results: torch's allocator
constexpr size_t kPoolKeep = size_t(1) << 30;  // free bytes kept at most
struct Pool {
  std::mutex lock;
  std::unordered_multimap<size_t, void*> free;  // by size in bytes
  size_t held = 0;
};
Pool& pool() {
  static Pool* p = new Pool();  // never destroyed: deleters may run at interpreter exit
  return *p;
}

void give_back(void* block, size_t bytes) {
  Pool& p = pool();
  {
    std::lock_guard<std::mutex> g(p.lock);
    if (p.held + bytes <= kPoolKeep) {
      p.free.emplace(bytes, block);
      p.held += bytes;
      return;
    }
  }
  std::free(block);
}

// A block of `bytes` (its size in its first kHeader bytes): a pooled one of that size, else new.
constexpr size_t kHeader = 64;
void* take(size_t bytes) {
  void* block = nullptr;
  {
    Pool& p = pool();
    std::lock_guard<std::mutex> g(p.lock);
    auto it = p.free.find(bytes);
    if (it != p.free.end()) {
      block = it->second;
      p.free.erase(it);
      p.held -= bytes;
    }
  }
  if (!block && posix_memalign(&block, 64, bytes) != 0) throw std::bad_alloc();
  *static_cast<size_t*>(block) = bytes;
  return block;
}

void release_block(void* block) { give_back(block, *static_cast<size_t*>(block)); }

// torch's allocator interface over the pool: storages stay resizable (a resize asks it again).
struct PoolAllocator final : c10::Allocator {
  c10::DataPtr allocate(size_t n) override {
    if (n < kPoolMin) return c10::GetCPUAllocator()->allocate(n);
    void* block = take(n + kHeader);
    return {static_cast<char*>(block) + kHeader, block, &release_block, c10::Device(c10::kCPU)};
  }
  void copy_data(void* dest, const void* src, size_t n) const override {
    default_copy_data(dest, src, n);
  }
};

at::Tensor empty_big(at::IntArrayRef sizes, const at::TensorOptions& opt) {
  static PoolAllocator* allocator = new PoolAllocator();  // never destroyed, like the pool
  if (!opt.device().is_cpu()) return at::empty(sizes, opt);
  return at::Tensor(at::detail::empty_generic(sizes, allocator,
                                              c10::DispatchKeySet(c10::DispatchKey::CPU),
                                              c10::typeMetaToScalarType(opt.dtype()), c10::nullopt));
}

// empty_big for Python callers: a tensor of `sizes` with `like`'s dtype and device.
at::Tensor empty_big_like(std::vector<int64_t> sizes, const at::Tensor& like) {
  return empty_big(sizes, like.options());
}

int64_t drop_pool() {
  Pool& p = pool();
  std::lock_guard<std::mutex> g(p.lock);
  const int64_t held = p.held;
  for (auto& kv : p.free) std::free(kv.second);
  p.free.clear();
  p.held = 0;
  return held;
}

// B (K, N), float32 of any strides, packed for mm_packed (kept by callers that reuse B).
// A float32 buffer of n values: `out` when it has that size (callers pass a buffer kept from
// an earlier call: fresh pages cost more than the packing itself), else a new one.
at::Tensor buffer(const c10::optional<at::Tensor>& out, int64_t n, const at::Tensor& like) {
  if (out && out->defined() && out->numel() == n && out->scalar_type() == at::kFloat &&
      out->is_contiguous())
    return *out;
  return at::empty({n}, like.options().dtype(at::kFloat));
}

// Whether a bfloat16 matrix can be moved as pairs along dimension `dim` (32-bit elements): an
// even length, unit stride there and an even stride across (so every pair is aligned).
bool pairs_along(const at::Tensor& t, int dim) {
  return t.scalar_type() == at::kBFloat16 && t.size(dim) % 2 == 0 && t.stride(dim) == 1 &&
         t.stride(1 - dim) % 2 == 0;
}

// B (K, N) packed for mm_packed: float32 of any strides, or (the bfloat16 tiles, inference)
// bfloat16 with K pairs contiguous (W^T of a row-major W with an even row length), packed
// as K / 2 rows of 32-bit pairs.
at::Tensor pack_rhs(const at::Tensor& b, const c10::optional<at::Tensor>& out) {
  const bool bf = b.scalar_type() == at::kBFloat16;
  TORCH_CHECK(tiles::kAvailable && b.dim() == 2 && (b.scalar_type() == at::kFloat ||
              (bf && tiles::kBf16 && pairs_along(b, 0))),
              "native pack_rhs: a float32 matrix (or bfloat16 pairs along K) on an AVX-512 CPU");
  const int K = bf ? b.size(0) / 2 : b.size(0), N = b.size(1);
  const int np = (N + tiles::kCols - 1) / tiles::kCols, kb = (K + tiles::kDepth - 1) / tiles::kDepth;
  at::Tensor packed = buffer(out, (int64_t)K * np * tiles::kCols, b);
  const float* pb = bf ? reinterpret_cast<const float*>(b.data_ptr<at::BFloat16>())
                       : b.data_ptr<float>();
  float* pp = packed.data_ptr<float>();
  const int64_t sk = b.stride(0), sn = bf ? b.stride(1) / 2 : b.stride(1);
  pybind11::gil_scoped_release no_gil;
#pragma omp parallel for schedule(static) num_threads(step_threads((int64_t)K * N))
  for (int i = 0; i < kb; ++i) tiles::pack_b(pb, sk, sn, K, N, i * tiles::kDepth, pp);
  return packed;
}

// How mm_packed shares C (M, N) between nt threads: `chunks` blocks of rows (boundaries on
// whole tiles) times `groups` blocks of panels, equal items whose count is a multiple of nt,
// so no thread waits for another (a last short chunk used to leave one thread 4 rows of 100,
// and 11 chunks over 2 threads one thread 6). Up to a chunk per thread the rows are not cut
// where the panels share out evenly: the threads split the panels instead, and each reads
// its share of B, not all of it.
struct Split {
  int M, chunks, groups;
  int row(int ch) const {
    if (ch >= chunks) return M;
    const int64_t r = ((int64_t)M * ch / chunks + tiles::kMaxRows / 2) / tiles::kMaxRows;
    return (int)std::min<int64_t>(M, r * tiles::kMaxRows);
  }
};

Split split_product(int M, int np, int nt) {
  const bool even_panels = np % nt == 0 || np >= 8 * nt;  // shares within an eighth
  if (M <= nt * tiles::kChunk && even_panels) return {M, 1, nt};
  const int chunks = std::max(nt, (M + tiles::kChunk - 1) / tiles::kChunk);
  return {M, (chunks + nt - 1) / nt * nt, 1};  // a multiple of the threads: equal shares
}

// C = A B (+ bias) on the tiles, B packed by pack_rhs with N columns; A float32 (M, K) with a
// unit stride either way (a transposed view needs no copy).
at::Tensor mm_packed(at::Tensor a, const at::Tensor& packed, int64_t N,
                     const c10::optional<at::Tensor>& bias) {
  const bool bf = a.scalar_type() == at::kBFloat16;  // with B packed from bfloat16 too
  TORCH_CHECK(tiles::kAvailable && a.dim() == 2 && (a.scalar_type() == at::kFloat || bf),
              "native mm: float32 or bfloat16 (M, K) @ (K, N) on an AVX-512 CPU");
  if (bf && !pairs_along(a, 1)) a = a.contiguous();
  TORCH_CHECK(!bf || (tiles::kBf16 && pairs_along(a, 1)), "native mm: bfloat16 pairs along K");
  if (a.stride(1) != 1 && a.stride(0) != 1) a = a.contiguous();
  const bool at_ = a.stride(1) != 1;  // stored transposed
  const int M = a.size(0), K = bf ? a.size(1) / 2 : a.size(1);
  const int lda = (at_ ? a.stride(1) : a.stride(0)) / (bf ? 2 : 1);
  const int np = (N + tiles::kCols - 1) / tiles::kCols;
  TORCH_CHECK(packed.numel() == (int64_t)K * np * tiles::kCols, "native mm: packed size");
  at::Tensor c = empty_big({M, N}, a.options().dtype(at::kFloat));
  at::Tensor bc = bias ? bias->to(at::kFloat).contiguous() : at::Tensor();
  const float* pa = bf ? reinterpret_cast<const float*>(a.data_ptr<at::BFloat16>())
                       : a.data_ptr<float>();
  const float* pp = packed.data_ptr<float>();
  const float* pbias = bias ? bc.data_ptr<float>() : nullptr;
  float* pc = c.data_ptr<float>();
  const int nt = step_threads((int64_t)M * N * K / 16);
  const Split sp = split_product(M, np, nt);
  pybind11::gil_scoped_release no_gil;
#pragma omp parallel for schedule(static) num_threads(nt)
  for (int it = 0; it < sp.chunks * sp.groups; ++it) {
    const int ch = it / sp.groups, gr = it % sp.groups;
    const int m0 = sp.row(ch), m1 = sp.row(ch + 1);
    const int u0 = (int)((int64_t)np * gr / sp.groups);
    const int u1 = (int)((int64_t)np * (gr + 1) / sp.groups);
    if (bf) {
      tiles::mm_block<false, true>(pa, lda, pp, pbias, pc, K, N, m0, m1, u0, u1);
    } else if (at_) {
      tiles::mm_block<true>(pa, lda, pp, pbias, pc, K, N, m0, m1, u0, u1);
    } else {
      tiles::mm_block<false>(pa, lda, pp, pbias, pc, K, N, m0, m1, u0, u1);
    }
  }
  return c;
}

// C = A W^T (+ bias) for a few rows of A (M, K) against W (N, K), both row-major: dot
// products along W's rows (small_nt), which read W once as it is, where packing it for the
// tiles would cost more than the product (a short input against a big weight).
at::Tensor mm_rows(const at::Tensor& a_, const at::Tensor& w_, const c10::optional<at::Tensor>& bias) {
  TORCH_CHECK(a_.dim() == 2 && w_.dim() == 2 && a_.size(1) == w_.size(1) &&
                  a_.scalar_type() == w_.scalar_type() && a_.scalar_type() == at::kFloat,
              "native mm_rows: float32 A (M, K) and W (N, K)");
  const at::Tensor a = a_.contiguous(), w = w_.contiguous();
  const int M = a.size(0), N = w.size(0), K = a.size(1);
  at::Tensor c = empty_big({M, N}, a.options());
  if (bias) c.copy_(bias->view({1, N}).expand({M, N}));
  const float *pa = a.data_ptr<float>(), *pw = w.data_ptr<float>();
  float* pc = c.data_ptr<float>();
  pybind11::gil_scoped_release no_gil;
  small_nt<float>(M, N, K, pa, pw, pc, bias.has_value());
  return c;
}

void tiled_product(int M, int N, int K, const float* a, const float* packed, float* c, bool acc) {
  const int np = (N + tiles::kCols - 1) / tiles::kCols;
  const int nt = step_threads((int64_t)M * N * K);
  const int groups = std::min(np, 2 * nt);
#pragma omp parallel for schedule(static) num_threads(nt)
  for (int gr = 0; gr < groups; ++gr) {
    const int u0 = (int)((int64_t)np * gr / groups), u1 = (int)((int64_t)np * (gr + 1) / groups);
    tiles::mm_block<false>(a, K, packed, nullptr, c, K, N, 0, M, u0, u1, acc);
  }
}

// The machine's fp32 FMA throughput (GFLOP/s) on `threads` threads: independent chains of
// fused multiply-adds on 512-bit vectors held in registers (for the benchmark's roofline;
// no memory traffic, so it is the ceiling any kernel can reach).
double fma_peak(int threads, int64_t iters) {
  typedef float v16 __attribute__((vector_size(64)));
  double seconds = 0;
  pybind11::gil_scoped_release no_gil;
#pragma omp parallel num_threads(threads) reduction(max : seconds)
  {
    const float s = 1e-3f * (1 + omp_get_thread_num());
    v16 a0 = v16{} + s, a1 = a0 + s, a2 = a1 + s, a3 = a2 + s, a4 = a3 + s, a5 = a4 + s;
    v16 a6 = a5 + s, a7 = a6 + s, a8 = a7 + s, a9 = a8 + s, a10 = a9 + s, a11 = a10 + s;
    const v16 m = v16{} + 0.999999f, c = v16{} + 1e-7f;
    const double t0 = omp_get_wtime();
    for (int64_t it = 0; it < iters; ++it) {  // 12 independent chains cover the FMA latency
      a0 = a0 * m + c, a1 = a1 * m + c, a2 = a2 * m + c, a3 = a3 * m + c;
      a4 = a4 * m + c, a5 = a5 * m + c, a6 = a6 * m + c, a7 = a7 * m + c;
      a8 = a8 * m + c, a9 = a9 * m + c, a10 = a10 * m + c, a11 = a11 * m + c;
    }
    seconds = omp_get_wtime() - t0;
    const v16 sum = a0 + a1 + a2 + a3 + a4 + a5 + a6 + a7 + a8 + a9 + a10 + a11;
    if (sum[0] == 12345.0f) seconds += 1e-9;  // the result is used: the loop is not dropped
  }
  return 2.0 * 16 * 12 * (double)iters * threads / seconds / 1e9;
}

// Whether mm_packed runs on this machine (float32 only; the caller checks the dtype).
bool has_tiles() { return tiles::kAvailable && g_tile_min > 0; }

// Whether the bfloat16 tiles run here (AVX-512 BF16, tiles not disabled).
bool has_bf16_tiles() { return tiles::kBf16 && has_tiles(); }

// The packed weight for the tiles, or an undefined tensor where they do not apply: another
// dtype, a projection, a CPU without AVX-512, or too few batch rows (tiles_for).
at::Tensor pack(const at::Tensor& w_hh, int64_t B, bool backward,
                const c10::optional<at::Tensor>& into) {
  const int64_t G = w_hh.size(0), H = G / 4;
  // bfloat16 (the forward of inference only): K = H as H / 2 pairs, moved as 32-bit elements
  // (from one row: the float32 dot loops' edge at a row or two against a big weight would
  // read twice the bytes, after widening it)
  const bool bf = w_hh.scalar_type() == at::kBFloat16;
  if (bf && (backward || !tiles::kBf16 || H % 2 || g_tile_min <= 0 || B < g_tile_min))
    return at::Tensor();
  if (!bf && !tiles_for(B, G * w_hh.size(1))) return at::Tensor();
  if (w_hh.size(1) != H || !(bf || w_hh.scalar_type() == at::kFloat)) return at::Tensor();
  const at::Tensor w = w_hh.contiguous();
  const int64_t P = bf ? H / 2 : H;  // 32-bit elements of a row of W_hh
  const int64_t panels = backward ? tiles::unit_panels(P) * G : tiles::gate_panels(H) * P;
  at::Tensor out = buffer(into, panels * tiles::kCols, w);
  const float* src = bf ? reinterpret_cast<const float*>(w.data_ptr<at::BFloat16>())
                        : w.data_ptr<float>();
  float* dst = out.data_ptr<float>();
  const int n = backward ? tiles::unit_panels(P) : tiles::gate_panels(H);
  pybind11::gil_scoped_release no_gil;
#pragma omp parallel for schedule(static) num_threads(step_threads(G * P))
  for (int u = 0; u < n; ++u) {
    if (backward) {
      tiles::pack_units(src, H, P, u, dst);
    } else {
      tiles::pack_gates(src, H, P, u, dst);
    }
  }
  return out;
}

template <typename T>
const T* ptr_or_null(const c10::optional<at::Tensor>& t) {
  return t ? t->data_ptr<T>() : nullptr;
}

// See Loops.forward in _bptt.py. xg (T, B, 4H) is overwritten with the activated gates.
std::vector<at::Tensor> forward(at::Tensor xg, at::Tensor h0, at::Tensor c0, at::Tensor w_hh,
                                c10::optional<at::Tensor> w_hr, c10::optional<at::Tensor> mask,
                                bool reverse, bool save, c10::optional<at::Tensor> packed) {
  TORCH_CHECK(xg.is_contiguous() && w_hh.is_contiguous(), "native: expects contiguous tensors");
  const int T = xg.size(0), B = xg.size(1), H = xg.size(2) / 4, P = w_hh.size(1);
  const auto opt = xg.options();
  at::Tensor hbuf = empty_big({T + 1, B, P}, opt);
  at::Tensor cbuf = empty_big({save ? T + 1 : 2, B, H}, opt);
  hbuf[reverse ? T : 0].copy_(h0);
  cbuf[reverse && save ? T : 0].copy_(c0);
  at::Tensor tc = save ? empty_big({T, B, H}, opt) : at::empty({B, H}, opt);
  at::Tensor r;
  if (w_hr) r = empty_big({save ? T : 1, B, H}, opt);
  Steps st(T, B, reverse, mask);
  // bfloat16 W_hh (inference): its panels from pack(), h read as bfloat16 pairs (see FwdStep)
  const bool bf = w_hh.scalar_type() == at::kBFloat16;
  TORCH_CHECK(!bf || (packed && packed->defined() && !save && !w_hr && H % 2 == 0 &&
                      xg.scalar_type() == at::kFloat),
              "native forward: bfloat16 W_hh runs inference on its packed panels only");
  at::Tensor hb;
  if (bf) {
    hb = at::empty({2, B, H}, opt.dtype(at::kBFloat16));
    hb[0].copy_(h0);  // rounded to nearest even, as each new h will be
  }
  pybind11::gil_scoped_release no_gil;  // plain loops and BLAS from here on: let Python run
  if (packed && packed->defined() && !w_hr) {  // from pack(): float32, no projection
    uint16_t* phb = bf ? reinterpret_cast<uint16_t*>(hb.data_ptr<at::BFloat16>()) : nullptr;
    forward_tiled(xg.data_ptr<float>(), hbuf.data_ptr<float>(), cbuf.data_ptr<float>(),
                  tc.data_ptr<float>(), packed->data_ptr<float>(), st, H, save, phb);
  } else AT_DISPATCH_FLOATING_TYPES(xg.scalar_type(), "lstm_native_forward", [&] {
    forward_impl<scalar_t>(xg.data_ptr<scalar_t>(), hbuf.data_ptr<scalar_t>(),
                           cbuf.data_ptr<scalar_t>(), tc.data_ptr<scalar_t>(),
                           w_hr ? r.data_ptr<scalar_t>() : nullptr, w_hh.data_ptr<scalar_t>(),
                           ptr_or_null<scalar_t>(w_hr), st, H, P, save);
  });
  at::Tensor c_n = cbuf[save ? (reverse ? 0 : T) : T % 2].clone();
  if (!save) return {hbuf, c_n};
  return {hbuf, c_n, cbuf, tc, w_hr ? r : at::Tensor()};
}

// See Loops.backward in _bptt.py. Returns dG (T, B, 4H), dht (T, B, P) or undefined, dh0, dc0.
// dcs (T, B, H), optional: the gradient of every step's cell state, added to dc at its step.
std::vector<at::Tensor> backward(c10::optional<at::Tensor> dout, c10::optional<at::Tensor> dh_n,
                                 c10::optional<at::Tensor> dc_n, at::Tensor gates,
                                 at::Tensor cbuf, at::Tensor tc, at::Tensor w_hh,
                                 c10::optional<at::Tensor> w_hr, c10::optional<at::Tensor> mask,
                                 bool reverse, c10::optional<at::Tensor> dcs,
                                 c10::optional<at::Tensor> packed) {
  const int T = gates.size(0), B = gates.size(1), H = gates.size(2) / 4, P = w_hh.size(1);
  const auto opt = gates.options();
  at::Tensor dG = empty_big({T, B, 4 * H}, opt);
  at::Tensor dht = w_hr ? empty_big({T, B, P}, opt) : at::Tensor();
  at::Tensor dh = dh_n ? dh_n->clone() : at::zeros({B, P}, opt);
  at::Tensor dc = dc_n ? dc_n->clone() : at::zeros({B, H}, opt);
  at::Tensor dr_buf = at::empty({B, H}, opt), dh_buf = at::empty({B, P}, opt);
  Steps st(T, B, reverse, mask);
  pybind11::gil_scoped_release no_gil;
  if (packed && packed->defined() && !w_hr) {  // from pack(): float32, no projection
    backward_tiled(dout ? dout->data_ptr<float>() : nullptr, dh.data_ptr<float>(),
                   dc.data_ptr<float>(), gates.data_ptr<float>(), cbuf.data_ptr<float>(),
                   tc.data_ptr<float>(), dG.data_ptr<float>(), packed->data_ptr<float>(), st, H,
                   dcs ? dcs->data_ptr<float>() : nullptr);
  } else AT_DISPATCH_FLOATING_TYPES(gates.scalar_type(), "lstm_native_backward", [&] {
    backward_impl<scalar_t>(ptr_or_null<scalar_t>(dout), dh.data_ptr<scalar_t>(),
                            dc.data_ptr<scalar_t>(), gates.data_ptr<scalar_t>(),
                            cbuf.data_ptr<scalar_t>(), tc.data_ptr<scalar_t>(),
                            dG.data_ptr<scalar_t>(), w_hr ? dht.data_ptr<scalar_t>() : nullptr,
                            w_hh.data_ptr<scalar_t>(), ptr_or_null<scalar_t>(w_hr), st, H, P,
                            dr_buf.data_ptr<scalar_t>(), dh_buf.data_ptr<scalar_t>(),
                            ptr_or_null<scalar_t>(dcs));
  });
  return {dG, dht, dh, dc};
}

// ---- Variants -----------------------------------------------------------------------------
// The same recurrences with lstmkit's variants (lstmkit/backends/_variant_loops.py is the
// Python twin, lstmkit/cell.py lstm_step the oracle): peepholes, layer norm of the recurrent
// projection and of the cell, coupled gates, cell clipping, recurrent dropout, zoneout. The
// input projection's layer norm happens before the loop, in _bptt.py. The per-row work is a
// few short loops, each testing its flag once, so each still vectorises.

template <typename T>
struct Var {
  const T* peep = nullptr;   // (3H,) i, f, o
  const T* g_hh = nullptr;   // (4H,) layer-norm gain of h W_hh^T; null: no layer norm
  const T* g_c = nullptr;    // (H,) layer-norm gain and shift of the cell
  const T* b_c = nullptr;
  bool coupled = false;
  T clip = 0;                // > 0: clip c to [-clip, clip]
  const T* h_mask = nullptr; // (B, P) recurrent dropout
  const T* zc = nullptr;     // (T, B, H) zoneout "keep" masks, or null and the scalar below
  const T* zh = nullptr;     // (T, B, P)
  T zc_s = 0, zh_s = 0;
  const float* packed = nullptr;  // W_hh^T (forward) or W_hh (backward) from pack_rhs
  bool ln() const { return g_hh != nullptr; }
  bool zone_c() const { return zc || zc_s != T(0); }
  bool zone_h() const { return zh || zh_s != T(0); }
};

// The variants' per-step products: on the tiles when the weight came packed (float32),
// split over the threads by panels; else BLAS or the small-batch loops (mm_nt, mm_nn).
// C (M, N) (+)= A (M, K) B, B packed by pack_rhs.
void tiled_product(int M, int N, int K, const float* a, const float* packed, float* c, bool acc);

template <typename T>
void var_nt(const Var<T>& v, int n, int G, int P, const T* h, const T* w_hh, T* out, bool acc) {
  if constexpr (std::is_same_v<T, float>) {
    if (v.packed) return tiled_product(n, G, P, h, v.packed, out, acc);
  }
  mm_nt<T>(n, G, P, h, w_hh, out, acc);
}

template <typename T>
void var_nn(const Var<T>& v, int n, int P, int G, const T* dg, const T* w_hh, T* out) {
  if constexpr (std::is_same_v<T, float>) {
    if (v.packed) return tiled_product(n, P, G, dg, v.packed, out, false);
  }
  mm_nn<T>(n, P, G, dg, w_hh, out);
}

constexpr double kLnEps = 1e-5;  // as lstmkit.cell.LN_EPS

// sum_j a[j] b[j] with vector accumulators (a float reduction does not vectorise by itself:
// the compiler may not reorder the additions).
template <typename T>
T vdot(int n, const T* __restrict a, const T* __restrict b) {
  using V = Vec<T>;
  typename V::type s0 = {}, s1 = {};
  int j = 0;
  for (; j + 2 * V::L <= n; j += 2 * V::L) {
    s0 += V::load(a + j) * V::load(b + j);
    s1 += V::load(a + j + V::L) * V::load(b + j + V::L);
  }
  for (; j + V::L <= n; j += V::L) s0 += V::load(a + j) * V::load(b + j);
  T s = V::sum(s0 + s1);
  for (; j < n; ++j) s += a[j] * b[j];
  return s;
}

template <typename T>
T vsum(int n, const T* __restrict a) {
  using V = Vec<T>;
  typename V::type s0 = {}, s1 = {};
  int j = 0;
  for (; j + 2 * V::L <= n; j += 2 * V::L) {
    s0 += V::load(a + j);
    s1 += V::load(a + j + V::L);
  }
  for (; j + V::L <= n; j += V::L) s0 += V::load(a + j);
  T s = V::sum(s0 + s1);
  for (; j < n; ++j) s += a[j];
  return s;
}

// y = (v - mean v) / sqrt(var v + eps) over n values; returns 1 / sqrt(var + eps).
template <typename T>
T normalize_row(int n, const T* __restrict v, T* __restrict y) {
  const T mean = vsum(n, v) / n;
  for (int j = 0; j < n; ++j) y[j] = v[j] - mean;
  const T rstd = T(1) / std::sqrt(vdot(n, y, y) / n + T(kLnEps));
  for (int j = 0; j < n; ++j) y[j] *= rstd;
  return rstd;
}

// dv from dy (gradient of the normalised row yhat) times gain: in place over d.
template <typename T>
void normalize_row_backward(int n, T* __restrict d, const T* __restrict gain,
                            const T* __restrict yhat, T rstd) {
  for (int j = 0; j < n; ++j) d[j] *= gain[j];
  const T m1 = vsum(n, d) / n, m2 = vdot(n, d, yhat) / n;
  for (int j = 0; j < n; ++j) d[j] = (d[j] - m1 - yhat[j] * m2) * rstd;
}

// One row of the forward step with variants. g: pre-activations (recurrent part added),
// overwritten with the activated gates; cp the previous cell; cw receives c' (before zoneout),
// tc tanh of the cell the output reads, hr = o tc; chat/crstd the normalised cell (layer norm).
template <typename T>
void gates_forward_var(int H, T* __restrict g, const T* __restrict cp, T* __restrict cw,
                       T* __restrict tc, T* __restrict hr, T* __restrict chat, T* crstd,
                       const Var<T>& v) {
  T* __restrict gi = g;
  T* __restrict gf = g + H;
  T* __restrict gg = g + 2 * H;
  T* __restrict go = g + 3 * H;
  if (v.peep)
    for (int j = 0; j < H; ++j) {
      gi[j] += v.peep[j] * cp[j];
      gf[j] += v.peep[H + j] * cp[j];
    }
  for (int j = 0; j < H; ++j) {
    gi[j] = sigmoid(gi[j]);
    gg[j] = tanh_(gg[j]);
  }
  if (v.coupled) {
    for (int j = 0; j < H; ++j) gf[j] = T(1) - gi[j];
  } else {
    for (int j = 0; j < H; ++j) gf[j] = sigmoid(gf[j]);
  }
  for (int j = 0; j < H; ++j) cw[j] = gf[j] * cp[j] + gi[j] * gg[j];
  if (v.clip > 0)
    for (int j = 0; j < H; ++j) cw[j] = std::min(std::max(cw[j], -v.clip), v.clip);
  if (v.peep)
    for (int j = 0; j < H; ++j) go[j] += v.peep[2 * H + j] * cw[j];
  for (int j = 0; j < H; ++j) go[j] = sigmoid(go[j]);
  const T* cout = cw;
  if (v.ln()) {
    *crstd = normalize_row(H, cw, chat);
    for (int j = 0; j < H; ++j) tc[j] = chat[j] * v.g_c[j] + v.b_c[j];
    cout = tc;
  }
  for (int j = 0; j < H; ++j) {
    const T t = tanh_(cout[j]);
    tc[j] = t;
    hr[j] = go[j] * t;
  }
}

// z ⊙ prev + (1 - z) ⊙ y into y, z a row of masks or a scalar.
template <typename T>
void zone_row(int n, T* __restrict y, const T* __restrict prev, const T* z, T zs) {
  if (z) {
    for (int j = 0; j < n; ++j) y[j] += z[j] * (prev[j] - y[j]);
  } else {
    for (int j = 0; j < n; ++j) y[j] += zs * (prev[j] - y[j]);
  }
}

template <typename T>
struct VarBufs {  // per-step outputs of the forward kept for the backward (null when unused)
  T* cnew = nullptr;   // (T, B, H) c' before zoneout
  T* ghat = nullptr;   // (T|1, B, 4H) normalised h W_hh^T
  T* grstd = nullptr;  // (T|1, B)
  T* chat = nullptr;   // (T|1, B, H)
  T* crstd = nullptr;  // (T|1, B)
  T* scratch = nullptr;  // (B, max(4H, P)) h_in or the raw recurrent projection
  T* scratch2 = nullptr; // (B, 4H)
};

template <typename T>
void forward_var_impl(T* xg, T* hbuf, T* cbuf, T* tc, T* r, const T* w_hh, const T* w_hr,
                      const Steps& st, int H, int P, bool save, const Var<T>& v,
                      const VarBufs<T>& vb) {
  const int B = st.B, G = 4 * H;
  const bool proj = w_hr != nullptr;
  for (int s = 0; s < st.T; ++s) {
    const int t = st.time(s), n = st.rows[t];
    const int64_t k = save ? t : 0;
    const T* hp = hbuf + (int64_t)st.read(t) * B * P;
    T* hn = hbuf + (int64_t)st.write(t) * B * P;
    const T* cp = cbuf + (int64_t)(save ? st.read(t) : s % 2) * B * H;
    T* cn = cbuf + (int64_t)(save ? st.write(t) : (s + 1) % 2) * B * H;
    T* tct = tc + k * B * H;
    T* rt = proj ? r + k * B * H : hn;
    T* g = xg + (int64_t)t * B * G;
    // c' before zoneout: its own buffer when zoneout mixes it with c afterwards.
    T* cw = v.zone_c() ? (save ? vb.cnew + (int64_t)t * B * H : vb.scratch2) : cn;
    const T* hin = hp;
    if (v.h_mask && n > 0) {
      for (int64_t e = 0; e < (int64_t)n * P; ++e) vb.scratch[e] = hp[e] * v.h_mask[e];
      hin = vb.scratch;
    }
    if (n > 0) {
      if (v.ln()) {
        T* raw = v.h_mask ? vb.scratch2 : vb.scratch;
        var_nt(v, n, G, P, hin, w_hh, raw, false);
        for (int b = 0; b < n; ++b) {
          T* gh = vb.ghat + (k * B + b) * G;
          vb.grstd[k * B + b] = normalize_row(G, raw + (int64_t)b * G, gh);
          T* gb = g + (int64_t)b * G;
          for (int j = 0; j < G; ++j) gb[j] += gh[j] * v.g_hh[j];
        }
      } else {
        var_nt(v, n, G, P, hin, w_hh, g, true);
      }
    }
    for (int b = 0; b < B; ++b) {
      if (b < n && st.live(t, b)) {
        T* chat = v.ln() ? vb.chat + (k * B + b) * H : nullptr;
        T* crs = v.ln() ? vb.crstd + k * B + b : nullptr;
        gates_forward_var(H, g + b * G, cp + b * H, cw + b * H, tct + b * H, rt + b * H, chat,
                          crs, v);
        if (v.zone_c()) {
          std::memcpy(cn + b * H, cw + b * H, sizeof(T) * H);
          zone_row(H, cn + b * H, cp + b * H, v.zc ? v.zc + ((int64_t)t * B + b) * H : nullptr,
                   v.zc_s);
        }
      } else {
        std::memcpy(cn + b * H, cp + b * H, sizeof(T) * H);
        if (proj) {
          std::fill(rt + b * H, rt + (b + 1) * H, T(0));
        } else {
          std::memcpy(hn + b * P, hp + b * P, sizeof(T) * P);
        }
        if (v.zone_c()) std::fill(cw + b * H, cw + (b + 1) * H, T(0));  // read by sums, times 0
        if (v.ln()) {  // finite zeros: the sums of the gains' gradients read every row
          std::fill(vb.ghat + (k * B + b) * G, vb.ghat + (k * B + b + 1) * G, T(0));
          std::fill(vb.chat + (k * B + b) * H, vb.chat + (k * B + b + 1) * H, T(0));
        }
      }
    }
    if (proj && n > 0) mm_nt<T>(n, P, H, rt, w_hr, hn, false);
    for (int b = 0; b < B; ++b) {
      const bool live = b < n && st.live(t, b);
      if (!live) {
        if (proj) std::memcpy(hn + b * P, hp + b * P, sizeof(T) * P);
      } else if (v.zone_h()) {
        zone_row(P, hn + b * P, hp + b * P, v.zh ? v.zh + ((int64_t)t * B + b) * P : nullptr,
                 v.zh_s);
      }
    }
  }
}

// One row of the backward step with variants: from dr (gradient of o tanh(cell out)) and dc
// (gradient of the cell state c_t), dg (pre-activation gate gradients) and dc for c_{t-1}.
template <typename T>
void gates_backward_var(int H, const T* __restrict g, const T* __restrict cp,
                        const T* __restrict cw, const T* __restrict tc, const T* __restrict dr,
                        T* __restrict dc, T* __restrict dg, T* __restrict dcout,
                        const T* __restrict chat, T crstd, const T* zc, T zc_s,
                        T* __restrict dcn, const Var<T>& v) {
  const T* __restrict gi = g;
  const T* __restrict gf = g + H;
  const T* __restrict gg = g + 2 * H;
  const T* __restrict go = g + 3 * H;
  T* __restrict di = dg;
  T* __restrict df = dg + H;
  T* __restrict dgg = dg + 2 * H;
  T* __restrict dgo = dg + 3 * H;
  for (int j = 0; j < H; ++j) {
    const T o = go[j], t = tc[j];
    dgo[j] = dr[j] * t * o * (T(1) - o);
    dcn[j] = dr[j] * o * (T(1) - t * t);  // gradient of the cell the output reads
  }
  if (v.ln()) {
    std::memcpy(dcout, dcn, sizeof(T) * H);
    normalize_row_backward(H, dcn, v.g_c, chat, crstd);
  }
  if (zc) {
    for (int j = 0; j < H; ++j) dcn[j] += dc[j] * (T(1) - zc[j]);
  } else {
    for (int j = 0; j < H; ++j) dcn[j] += dc[j] * (T(1) - zc_s);
  }
  if (v.peep)
    for (int j = 0; j < H; ++j) dcn[j] += dgo[j] * v.peep[2 * H + j];
  if (v.clip > 0)
    for (int j = 0; j < H; ++j) dcn[j] = std::abs(cw[j]) < v.clip ? dcn[j] : T(0);
  for (int j = 0; j < H; ++j) {
    const T i = gi[j], z = gg[j], d = dcn[j];
    di[j] = (v.coupled ? d * (z - cp[j]) : d * z) * i * (T(1) - i);
    dgg[j] = d * i * (T(1) - z * z);
  }
  if (v.coupled) {
    std::fill(df, df + H, T(0));
  } else {
    for (int j = 0; j < H; ++j) df[j] = dcn[j] * cp[j] * gf[j] * (T(1) - gf[j]);
  }
  // dc for c_{t-1}: through f, the peepholes, and zoneout's direct path.
  if (zc) {
    for (int j = 0; j < H; ++j) dc[j] = dcn[j] * gf[j] + dc[j] * zc[j];
  } else {
    for (int j = 0; j < H; ++j) dc[j] = dcn[j] * gf[j] + dc[j] * zc_s;
  }
  if (v.peep)
    for (int j = 0; j < H; ++j) dc[j] += di[j] * v.peep[j] + df[j] * v.peep[H + j];
}

template <typename T>
struct VarGrads {
  T* dgh = nullptr;    // (T, B, 4H) gradient of the raw h W_hh^T (layer norm)
  T* dpeep = nullptr;  // (3H,) sums over every step: the peepholes' gradients
  T* dg_hh = nullptr;  // (4H,) and the layer-norm gains' and shift's
  T* dg_c = nullptr;   // (H,)
  T* db_c = nullptr;   // (H,)
  T* dcout = nullptr;  // (H) scratch: gradient of the normalised cell
  T* dhn = nullptr;    // (B, P) scratch: dh times (1 - zoneout)
  T* dcn = nullptr;    // (H) scratch
};

// Add one live row's share to the parameter sums (see VarGrads).
template <typename T>
void accumulate_row(int H, const T* __restrict dg, const T* __restrict cp,
                    const T* __restrict cw, const T* __restrict ghat,
                    const T* __restrict chat, const Var<T>& v, const VarGrads<T>& vg) {
  if (v.peep) {
    for (int j = 0; j < H; ++j) {
      vg.dpeep[j] += dg[j] * cp[j];
      vg.dpeep[H + j] += dg[H + j] * cp[j];
      vg.dpeep[2 * H + j] += dg[3 * H + j] * cw[j];
    }
  }
  if (v.ln()) {
    for (int j = 0; j < 4 * H; ++j) vg.dg_hh[j] += dg[j] * ghat[j];
    for (int j = 0; j < H; ++j) {
      vg.dg_c[j] += vg.dcout[j] * chat[j];
      vg.db_c[j] += vg.dcout[j];
    }
  }
}

template <typename T>
void backward_var_impl(const T* dout, T* dh, T* dc, const T* gates, const T* cbuf, const T* tc,
                       T* dG, T* dht, const T* w_hh, const T* w_hr, const Steps& st, int H,
                       int P, T* dr_buf, T* dh_buf, const Var<T>& v, const VarBufs<T>& vb,
                       const VarGrads<T>& vg, const T* dcs) {
  const int B = st.B, G = 4 * H;
  const bool proj = w_hr != nullptr;
  for (int s = st.T - 1; s >= 0; --s) {
    const int t = st.time(s), n = st.rows[t];
    const T* g = gates + (int64_t)t * B * G;
    const T* cp = cbuf + (int64_t)st.read(t) * B * H;
    const T* cw = v.zone_c() ? vb.cnew + (int64_t)t * B * H : cbuf + (int64_t)st.write(t) * B * H;
    const T* tct = tc + (int64_t)t * B * H;
    T* dg = dG + (int64_t)t * B * G;
    T* dgh = v.ln() ? vg.dgh + (int64_t)t * B * G : dg;
    if (dout) add_output_grad(dout, dh, st, t, n, P);
    if (dcs) add_output_grad(dcs, dc, st, t, n, H);  // the returned cell states' gradient
    // dh_new = dh (1 - z_h): the gradient reaching this step's fresh h.
    const T* dhn = dh;
    if (v.zone_h()) {
      for (int b = 0; b < n; ++b) {
        const T* z = v.zh ? v.zh + ((int64_t)t * B + b) * P : nullptr;
        for (int j = 0; j < P; ++j)
          vg.dhn[b * P + j] = dh[b * P + j] * (T(1) - (z ? z[j] : v.zh_s));
      }
      dhn = vg.dhn;
    }
    const T* dr = proj ? projection_backward(dhn, dht, w_hr, st, t, n, H, P, dr_buf) : dhn;
    for (int b = 0; b < B; ++b) {
      if (b < n && st.live(t, b)) {
        const int64_t row = (int64_t)t * B + b;
        const T* chat = v.ln() ? vb.chat + row * H : nullptr;
        const T* ghat = v.ln() ? vb.ghat + row * G : nullptr;
        gates_backward_var(H, g + b * G, cp + b * H, cw + b * H, tct + b * H, dr + b * H,
                           dc + b * H, dg + b * G, vg.dcout, chat,
                           v.ln() ? vb.crstd[row] : T(0), v.zc ? v.zc + row * H : nullptr,
                           v.zc_s, vg.dcn, v);
        accumulate_row(H, dg + b * G, cp + b * H, cw + b * H, ghat, chat, v, vg);
        if (v.ln()) {
          std::memcpy(dgh + b * G, dg + b * G, sizeof(T) * G);
          normalize_row_backward(G, dgh + b * G, v.g_hh, ghat, vb.grstd[row]);
        }
      } else {
        std::fill(dg + b * G, dg + (b + 1) * G, T(0));
        if (v.ln()) std::fill(dgh + b * G, dgh + (b + 1) * G, T(0));
      }
    }
    if (n == 0) continue;
    var_nn(v, n, P, G, dgh, w_hh, dh_buf);  // the gradient of the h the gates read
    for (int b = 0; b < n; ++b) {
      if (!st.live(t, b)) continue;
      const T* m = v.h_mask ? v.h_mask + (int64_t)b * P : nullptr;
      const T* z = v.zh ? v.zh + ((int64_t)t * B + b) * P : nullptr;
      for (int j = 0; j < P; ++j) {
        T d = dh_buf[b * P + j];
        if (m) d *= m[j];
        if (v.zone_h()) d += dh[b * P + j] * (z ? z[j] : v.zh_s);
        dh[b * P + j] = d;
      }
    }
  }
}

template <typename T>
const T* opt_ptr(const c10::optional<at::Tensor>& t) {
  return t && t->defined() ? t->data_ptr<T>() : nullptr;
}

template <typename T>
Var<T> make_var(const c10::optional<at::Tensor>& peep, const c10::optional<at::Tensor>& g_hh,
                const c10::optional<at::Tensor>& g_c, const c10::optional<at::Tensor>& b_c,
                bool coupled, double clip, const c10::optional<at::Tensor>& h_mask,
                const c10::optional<at::Tensor>& zc, double zc_s,
                const c10::optional<at::Tensor>& zh, double zh_s) {
  Var<T> v;
  v.peep = opt_ptr<T>(peep);
  v.g_hh = opt_ptr<T>(g_hh);
  v.g_c = opt_ptr<T>(g_c);
  v.b_c = opt_ptr<T>(b_c);
  v.coupled = coupled;
  v.clip = T(clip);
  v.h_mask = opt_ptr<T>(h_mask);
  v.zc = opt_ptr<T>(zc);
  v.zh = opt_ptr<T>(zh);
  v.zc_s = T(zc_s);
  v.zh_s = T(zh_s);
  return v;
}

at::Tensor undef_or(bool want, at::IntArrayRef shape, const at::TensorOptions& opt) {
  return want ? empty_big(shape, opt) : at::Tensor();
}

// Variants' forward: see Loops.forward in _bptt.py. Returns hbuf, c_n, cbuf, tc, r, cnew,
// ghat, grstd, chat, crstd (undefined where unused; only hbuf and c_n without save).
// The packed weight's data for the variants' products: float32 only (double keeps BLAS).
const float* packed_float(const c10::optional<at::Tensor>& packed, const at::Tensor& like) {
  if (!packed || !packed->defined() || like.scalar_type() != at::kFloat) return nullptr;
  return packed->data_ptr<float>();
}

std::vector<at::Tensor> forward_var(at::Tensor xg, at::Tensor h0, at::Tensor c0, at::Tensor w_hh,
                                    c10::optional<at::Tensor> w_hr,
                                    c10::optional<at::Tensor> mask, bool reverse, bool save,
                                    c10::optional<at::Tensor> peep,
                                    c10::optional<at::Tensor> g_hh,
                                    c10::optional<at::Tensor> g_c,
                                    c10::optional<at::Tensor> b_c, bool coupled, double clip,
                                    c10::optional<at::Tensor> h_mask,
                                    c10::optional<at::Tensor> zc, double zc_s,
                                    c10::optional<at::Tensor> zh, double zh_s,
                                    c10::optional<at::Tensor> packed) {
  TORCH_CHECK(xg.is_contiguous() && w_hh.is_contiguous(), "native: expects contiguous tensors");
  const int T = xg.size(0), B = xg.size(1), H = xg.size(2) / 4, P = w_hh.size(1), G = 4 * H;
  const auto opt = xg.options();
  const int n = save ? T : 1;
  const bool ln = g_hh.has_value() && g_hh->defined();
  const bool zone_c = (zc && zc->defined()) || zc_s != 0;
  at::Tensor hbuf = empty_big({T + 1, B, P}, opt);
  at::Tensor cbuf = empty_big({save ? T + 1 : 2, B, H}, opt);
  hbuf[reverse ? T : 0].copy_(h0);
  cbuf[reverse && save ? T : 0].copy_(c0);
  at::Tensor tc = empty_big({n, B, H}, opt);
  at::Tensor r = undef_or(w_hr.has_value(), {n, B, H}, opt);
  at::Tensor cnew = undef_or(zone_c && save, {T, B, H}, opt);
  at::Tensor ghat = undef_or(ln, {n, B, G}, opt), grstd = undef_or(ln, {n, B}, opt);
  at::Tensor chat = undef_or(ln, {n, B, H}, opt), crstd = undef_or(ln, {n, B}, opt);
  at::Tensor scratch = at::empty({B, std::max(G, P)}, opt), scratch2 = at::empty({B, G}, opt);
  Steps st(T, B, reverse, mask);
  pybind11::gil_scoped_release no_gil;
  AT_DISPATCH_FLOATING_TYPES(xg.scalar_type(), "lstm_native_forward_var", [&] {
    using S = scalar_t;
    auto v = make_var<S>(peep, g_hh, g_c, b_c, coupled, clip, h_mask, zc, zc_s, zh, zh_s);
    v.packed = packed_float(packed, xg);  // W_hh^T from pack_rhs
    VarBufs<S> vb;
    auto p = [](at::Tensor& t) { return t.defined() ? t.data_ptr<S>() : nullptr; };
    vb.cnew = p(cnew);
    vb.ghat = p(ghat);
    vb.grstd = p(grstd);
    vb.chat = p(chat);
    vb.crstd = p(crstd);
    vb.scratch = p(scratch);
    vb.scratch2 = p(scratch2);
    forward_var_impl<S>(xg.data_ptr<S>(), hbuf.data_ptr<S>(), cbuf.data_ptr<S>(), tc.data_ptr<S>(),
                        p(r), w_hh.data_ptr<S>(), ptr_or_null<S>(w_hr), st, H, P, save, v, vb);
  });
  at::Tensor c_n = cbuf[save ? (reverse ? 0 : T) : T % 2].clone();
  if (!save) return {hbuf, c_n};
  return {hbuf, c_n, cbuf, tc, r, cnew, ghat, grstd, chat, crstd};
}

// Variants' backward: see Loops.backward in _bptt.py. Returns dG, dht, dh0, dc0, dgh, and the
// parameter sums dpeep, dg_hh, dg_c, db_c (undefined where unused).
std::vector<at::Tensor> backward_var(
    c10::optional<at::Tensor> dout, c10::optional<at::Tensor> dh_n,
    c10::optional<at::Tensor> dc_n, at::Tensor gates, at::Tensor cbuf, at::Tensor tc,
    at::Tensor w_hh, c10::optional<at::Tensor> w_hr, c10::optional<at::Tensor> mask,
    bool reverse, c10::optional<at::Tensor> peep, c10::optional<at::Tensor> g_hh,
    c10::optional<at::Tensor> g_c, c10::optional<at::Tensor> b_c, bool coupled, double clip,
    c10::optional<at::Tensor> h_mask, c10::optional<at::Tensor> zc, double zc_s,
    c10::optional<at::Tensor> zh, double zh_s, c10::optional<at::Tensor> cnew,
    c10::optional<at::Tensor> ghat, c10::optional<at::Tensor> grstd,
    c10::optional<at::Tensor> chat, c10::optional<at::Tensor> crstd,
    c10::optional<at::Tensor> dcs, c10::optional<at::Tensor> packed) {
  const int T = gates.size(0), B = gates.size(1), H = gates.size(2) / 4, P = w_hh.size(1);
  const auto opt = gates.options();
  const bool ln = g_hh.has_value() && g_hh->defined();
  at::Tensor dG = empty_big({T, B, 4 * H}, opt);
  at::Tensor dht = undef_or(w_hr.has_value(), {T, B, P}, opt);
  at::Tensor dgh = undef_or(ln, {T, B, 4 * H}, opt), dcout = at::empty({H}, opt);
  const bool has_peep = peep.has_value() && peep->defined();
  at::Tensor dpeep = has_peep ? at::zeros({3 * H}, opt) : at::Tensor();
  at::Tensor dg_hh = ln ? at::zeros({4 * H}, opt) : at::Tensor();
  at::Tensor dg_c = ln ? at::zeros({H}, opt) : at::Tensor();
  at::Tensor db_c = ln ? at::zeros({H}, opt) : at::Tensor();
  at::Tensor dh = dh_n ? dh_n->clone() : at::zeros({B, P}, opt);
  at::Tensor dc = dc_n ? dc_n->clone() : at::zeros({B, H}, opt);
  at::Tensor dr_buf = at::empty({B, H}, opt), dh_buf = at::empty({B, P}, opt);
  at::Tensor dhn = at::empty({B, P}, opt), dcn = at::empty({H}, opt);
  Steps st(T, B, reverse, mask);
  pybind11::gil_scoped_release no_gil;
  AT_DISPATCH_FLOATING_TYPES(gates.scalar_type(), "lstm_native_backward_var", [&] {
    using S = scalar_t;
    auto v = make_var<S>(peep, g_hh, g_c, b_c, coupled, clip, h_mask, zc, zc_s, zh, zh_s);
    v.packed = packed_float(packed, gates);  // W_hh from pack_rhs
    VarBufs<S> vb;
    vb.cnew = const_cast<S*>(opt_ptr<S>(cnew));
    vb.ghat = const_cast<S*>(opt_ptr<S>(ghat));
    vb.grstd = const_cast<S*>(opt_ptr<S>(grstd));
    vb.chat = const_cast<S*>(opt_ptr<S>(chat));
    vb.crstd = const_cast<S*>(opt_ptr<S>(crstd));
    VarGrads<S> vg;
    vg.dgh = ln ? dgh.data_ptr<S>() : nullptr;
    vg.dcout = dcout.data_ptr<S>();
    vg.dpeep = has_peep ? dpeep.data_ptr<S>() : nullptr;
    vg.dg_hh = ln ? dg_hh.data_ptr<S>() : nullptr;
    vg.dg_c = ln ? dg_c.data_ptr<S>() : nullptr;
    vg.db_c = ln ? db_c.data_ptr<S>() : nullptr;
    vg.dhn = dhn.data_ptr<S>();
    vg.dcn = dcn.data_ptr<S>();
    backward_var_impl<S>(ptr_or_null<S>(dout), dh.data_ptr<S>(), dc.data_ptr<S>(),
                         gates.data_ptr<S>(), cbuf.data_ptr<S>(), tc.data_ptr<S>(),
                         dG.data_ptr<S>(), w_hr ? dht.data_ptr<S>() : nullptr,
                         w_hh.data_ptr<S>(), ptr_or_null<S>(w_hr), st, H, P,
                         dr_buf.data_ptr<S>(), dh_buf.data_ptr<S>(), v, vb, vg,
                         ptr_or_null<S>(dcs));
  });
  return {dG, dht, dh, dc, dgh, dpeep, dg_hh, dg_c, db_c};
}

// ---- Layer norm of the input projection, for all steps at once ------------------------------
// Rows (N, n) of x W_ih^T: y = (v - mean) / std * gain (+ shift), in place; vhat and rstd are
// kept for the backward when asked. One pass per row in cache, rows split over threads
// (torch's var_mean reduces a short last dimension slowly).
std::vector<at::Tensor> norm_rows(at::Tensor v, at::Tensor gain, c10::optional<at::Tensor> shift,
                                  bool save) {
  TORCH_CHECK(v.is_contiguous() && gain.is_contiguous(), "native: expects contiguous tensors");
  const int64_t n = v.size(-1), N = v.numel() / n;
  at::Tensor vhat = save ? at::empty_like(v) : at::Tensor();
  at::Tensor rstd = save ? at::empty(v.sizes().slice(0, v.dim() - 1), v.options()) : at::Tensor();
  pybind11::gil_scoped_release no_gil;
  AT_DISPATCH_FLOATING_TYPES(v.scalar_type(), "lstm_native_norm_rows", [&] {
    using S = scalar_t;
    S* pv = v.data_ptr<S>();
    const S* g = gain.data_ptr<S>();
    const S* b = opt_ptr<S>(shift);
    S* ph = save ? vhat.data_ptr<S>() : nullptr;
    S* pr = save ? rstd.data_ptr<S>() : nullptr;
    at::parallel_for(0, N, 64, [&](int64_t r0, int64_t r1) {
      std::vector<S> tmp(n);
      for (int64_t r = r0; r < r1; ++r) {
        S* row = pv + r * n;
        S* hat = ph ? ph + r * n : tmp.data();
        const S rs = normalize_row<S>(n, row, hat);
        if (pr) pr[r] = rs;
        if (b) {
          for (int64_t j = 0; j < n; ++j) row[j] = hat[j] * g[j] + b[j];
        } else {
          for (int64_t j = 0; j < n; ++j) row[j] = hat[j] * g[j];
        }
      }
    });
  });
  return {v, vhat, rstd};
}

// The backward of norm_rows: from dy (N, n), dv (N, n) and the gain's gradient (n,).
std::vector<at::Tensor> norm_rows_backward(at::Tensor dy, at::Tensor gain, at::Tensor vhat,
                                           at::Tensor rstd) {
  TORCH_CHECK(dy.is_contiguous() && vhat.is_contiguous(), "native: expects contiguous tensors");
  const int64_t n = dy.size(-1), N = dy.numel() / n;
  at::Tensor dv = at::empty_like(dy);
  const int nt = at::get_num_threads();
  at::Tensor partial = at::zeros({nt, n}, dy.options());
  pybind11::gil_scoped_release no_gil;
  AT_DISPATCH_FLOATING_TYPES(dy.scalar_type(), "lstm_native_norm_rows_backward", [&] {
    using S = scalar_t;
    const S* pd = dy.data_ptr<S>();
    const S* g = gain.data_ptr<S>();
    const S* ph = vhat.data_ptr<S>();
    const S* pr = rstd.data_ptr<S>();
    S* out = dv.data_ptr<S>();
    S* acc0 = partial.data_ptr<S>();
    at::parallel_for(0, N, 64, [&](int64_t r0, int64_t r1) {
      S* acc = acc0 + (int64_t)at::get_thread_num() * n;
      for (int64_t r = r0; r < r1; ++r) {
        const S* d = pd + r * n;
        const S* hat = ph + r * n;
        S* o = out + r * n;
        for (int64_t j = 0; j < n; ++j) {
          acc[j] += d[j] * hat[j];
          o[j] = d[j];
        }
        normalize_row_backward<S>(n, o, g, hat, pr[r]);
      }
    });
  });
  return {dv, partial.sum(0)};
}

// For measuring and tests: the batch up to which the handwritten loops may run (0: BLAS
// always), the work per step from which they use the intra-op threads, whether the
// batch limit also depends on the weight's size (small_batch), and the least batch that
// takes the tiles (0: never).
void set_tuning(int small_b, int64_t par_min, bool by_size, int tile_min) {
  g_small_b = small_b;
  g_par_min = par_min;
  g_by_size = by_size;
  g_tile_min = tile_min;
}

}  // namespace

PYBIND11_MODULE(TORCH_EXTENSION_NAME, m) {
  m.def("forward", &forward, "LSTM forward recurrence (one layer, one direction)");
  m.def("backward", &backward, "LSTM backward recurrence (one layer, one direction)");
  m.def("forward_var", &forward_var, "LSTM forward recurrence with variants");
  m.def("backward_var", &backward_var, "LSTM backward recurrence with variants");
  m.def("norm_rows", &norm_rows, "layer norm of rows, in place");
  m.def("norm_rows_backward", &norm_rows_backward, "backward of norm_rows");
  m.def("set_tuning", &set_tuning, "small-batch, parallel-work and tile thresholds");
  m.def("drop_pool", &drop_pool, "free the pooled result blocks; returns the bytes freed");
  m.def("empty_big", &empty_big_like, "an uninitialised tensor, big ones from the pool");
  m.def("pack_rhs", &pack_rhs, "float32 B packed for mm_packed");
  m.def("mm_rows", &mm_rows, "float32 A @ W^T (+ bias) as dot products along W's rows");
  m.def("mm_packed", &mm_packed, "float32 A @ B (+ bias) on the register tiles");
  m.def("fma_peak", &fma_peak, "fp32 FMA throughput in GFLOP/s on n threads (a probe)");
  m.def("pack_pays", &pack_pays, "whether packing a weight for the tiles pays over these rows");
  m.def("tiles_for", &tiles_for, "whether B rows against this many weights take the tiles");
  m.def("has_bf16_tiles", &has_bf16_tiles, "whether the bfloat16 tiles run here (AVX-512 BF16)");
  m.def("has_tiles", &has_tiles, "whether the register tiles run here (AVX-512, not disabled)");
  m.def("pack", &pack, "W_hh packed for the tiled forward or backward steps, or undefined");
}
