// The native CPU backend: the LSTM forward and backward recurrences as C++ loops.
//
// Only the per-step work lives here (see lstmkit/backends/_bptt.py for the frame and the
// buffer layout): one GEMM per step straight into BLAS, and the gate math as plain loops over
// contiguous arrays that the compiler vectorises. Per step there is no tensor creation and no
// dispatcher call, which is what dominates at small hidden sizes and batches.
//
// Shapes: T time, B batch, H hidden, P projected (= H without projection), G = 4H.
// Gate order i, f, g, o. All tensors are contiguous, time-major, float or double.

#include <torch/extension.h>

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <cstring>
#include <vector>

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

// One row of the forward step: activate the gates in place, c' = f c + i g,
// tc = tanh(c'), hr = o tc (the h before projection).
template <typename T>
void gates_forward(int H, T* __restrict g, const T* __restrict c, T* __restrict c_new,
                   T* __restrict tc, T* __restrict hr) {
  T* __restrict gi = g;
  T* __restrict gf = g + H;
  T* __restrict gg = g + 2 * H;
  T* __restrict go = g + 3 * H;
  for (int j = 0; j < H; ++j) {
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

// One row of the backward step: from dr = dL/d(o tanh c') and the carried dc, the
// pre-activation gate gradients dg, and dc for the previous step (in place).
template <typename T>
void gates_backward(int H, const T* __restrict g, const T* __restrict c_prev,
                    const T* __restrict tc, const T* __restrict dr, T* __restrict dc,
                    T* __restrict dg) {
  const T* __restrict gi = g;
  const T* __restrict gf = g + H;
  const T* __restrict gg = g + 2 * H;
  const T* __restrict go = g + 3 * H;
  for (int j = 0; j < H; ++j) {
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
    if (n > 0) gemm<T>(false, true, n, G, P, hp, w_hh, T(1), g);  // g += h W_hh^T
    for (int b = 0; b < B; ++b) {
      if (b < n && st.live(t, b)) {
        gates_forward(H, g + b * G, cp + b * H, cn + b * H, tct + b * H, rt + b * H);
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
      if (n > 0) gemm<T>(false, true, n, P, H, rt, w_hr, T(0), hn);  // h = r W_hr^T
      for (int b = 0; b < B; ++b)
        if (!(b < n && st.live(t, b))) std::memcpy(hn + b * P, hp + b * P, sizeof(T) * P);
    }
  }
}

template <typename T>
void backward_impl(const T* dout, T* dh, T* dc, const T* gates, const T* cbuf, const T* tc,
                   T* dG, T* dht, const T* w_hh, const T* w_hr, const Steps& st, int H, int P,
                   T* dr_buf, T* dh_buf) {
  const int B = st.B, G = 4 * H;
  const bool proj = w_hr != nullptr;
  for (int s = st.T - 1; s >= 0; --s) {
    const int t = st.time(s), n = st.rows[t];
    const T* g = gates + (int64_t)t * B * G;
    const T* cp = cbuf + (int64_t)st.read(t) * B * H;
    const T* tct = tc + (int64_t)t * B * H;
    T* dg = dG + (int64_t)t * B * G;
    if (dout) {
      const T* d = dout + (int64_t)t * B * P;
      for (int b = 0; b < n; ++b)
        if (st.live(t, b))  // out is constant zero on dead steps: their gradient is dropped
          for (int j = 0; j < P; ++j) dh[b * P + j] += d[b * P + j];
    }
    const T* dr = dh;
    if (proj) {
      T* dhtt = dht + (int64_t)t * B * P;
      for (int b = 0; b < B; ++b) {
        if (b < n && st.live(t, b)) {
          std::memcpy(dhtt + b * P, dh + b * P, sizeof(T) * P);
        } else {
          std::fill(dhtt + b * P, dhtt + (b + 1) * P, T(0));
        }
      }
      if (n > 0) gemm<T>(false, false, n, H, P, dh, w_hr, T(0), dr_buf);  // dr = dh W_hr
      dr = dr_buf;
    }
    for (int b = 0; b < B; ++b) {
      if (b < n && st.live(t, b)) {
        gates_backward(H, g + b * G, cp + b * H, tct + b * H, dr + b * H, dc + b * H,
                       dg + b * G);
      } else {
        std::fill(dg + b * G, dg + (b + 1) * G, T(0));
      }
    }
    if (n == 0) continue;
    if (!st.mask) {
      gemm<T>(false, false, B, P, G, dg, w_hh, T(0), dh);  // dh = dG W_hh
    } else {
      gemm<T>(false, false, n, P, G, dg, w_hh, T(0), dh_buf);
      for (int b = 0; b < n; ++b)
        if (st.live(t, b)) std::memcpy(dh + b * P, dh_buf + b * P, sizeof(T) * P);
    }
  }
}

template <typename T>
const T* ptr_or_null(const c10::optional<at::Tensor>& t) {
  return t ? t->data_ptr<T>() : nullptr;
}

// See Loops.forward in _bptt.py. xg (T, B, 4H) is overwritten with the activated gates.
std::vector<at::Tensor> forward(at::Tensor xg, at::Tensor h0, at::Tensor c0, at::Tensor w_hh,
                                c10::optional<at::Tensor> w_hr, c10::optional<at::Tensor> mask,
                                bool reverse, bool save) {
  TORCH_CHECK(xg.is_contiguous() && w_hh.is_contiguous(), "native: expects contiguous tensors");
  const int T = xg.size(0), B = xg.size(1), H = xg.size(2) / 4, P = w_hh.size(1);
  const auto opt = xg.options();
  at::Tensor hbuf = at::empty({T + 1, B, P}, opt);
  at::Tensor cbuf = at::empty({save ? T + 1 : 2, B, H}, opt);
  hbuf[reverse ? T : 0].copy_(h0);
  cbuf[reverse && save ? T : 0].copy_(c0);
  at::Tensor tc = save ? at::empty({T, B, H}, opt) : at::empty({B, H}, opt);
  at::Tensor r;
  if (w_hr) r = at::empty({save ? T : 1, B, H}, opt);
  Steps st(T, B, reverse, mask);
  pybind11::gil_scoped_release no_gil;  // plain loops and BLAS from here on: let Python run
  AT_DISPATCH_FLOATING_TYPES(xg.scalar_type(), "lstm_native_forward", [&] {
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
std::vector<at::Tensor> backward(c10::optional<at::Tensor> dout, c10::optional<at::Tensor> dh_n,
                                 c10::optional<at::Tensor> dc_n, at::Tensor gates,
                                 at::Tensor cbuf, at::Tensor tc, at::Tensor w_hh,
                                 c10::optional<at::Tensor> w_hr, c10::optional<at::Tensor> mask,
                                 bool reverse) {
  const int T = gates.size(0), B = gates.size(1), H = gates.size(2) / 4, P = w_hh.size(1);
  const auto opt = gates.options();
  at::Tensor dG = at::empty({T, B, 4 * H}, opt);
  at::Tensor dht = w_hr ? at::empty({T, B, P}, opt) : at::Tensor();
  at::Tensor dh = dh_n ? dh_n->clone() : at::zeros({B, P}, opt);
  at::Tensor dc = dc_n ? dc_n->clone() : at::zeros({B, H}, opt);
  at::Tensor dr_buf = at::empty({B, H}, opt), dh_buf = at::empty({B, P}, opt);
  Steps st(T, B, reverse, mask);
  pybind11::gil_scoped_release no_gil;
  AT_DISPATCH_FLOATING_TYPES(gates.scalar_type(), "lstm_native_backward", [&] {
    backward_impl<scalar_t>(ptr_or_null<scalar_t>(dout), dh.data_ptr<scalar_t>(),
                            dc.data_ptr<scalar_t>(), gates.data_ptr<scalar_t>(),
                            cbuf.data_ptr<scalar_t>(), tc.data_ptr<scalar_t>(),
                            dG.data_ptr<scalar_t>(), w_hr ? dht.data_ptr<scalar_t>() : nullptr,
                            w_hh.data_ptr<scalar_t>(), ptr_or_null<scalar_t>(w_hr), st, H, P,
                            dr_buf.data_ptr<scalar_t>(), dh_buf.data_ptr<scalar_t>());
  });
  return {dG, dht, dh, dc};
}

}  // namespace

PYBIND11_MODULE(TORCH_EXTENSION_NAME, m) {
  m.def("forward", &forward, "LSTM forward recurrence (one layer, one direction)");
  m.def("backward", &backward, "LSTM backward recurrence (one layer, one direction)");
}
