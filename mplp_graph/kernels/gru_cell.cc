// The stateful MPLP learner's GRU cell (paper eqs. 6-8; reference-notes 2.1) as one CPU kernel,
// forward and backward, called from JAX through its FFI (mplp_graph/kernels/__init__.py).
//
// Per row (one agent of one example), with C carry channels and hidden layers of 80 and 40:
//   g   = sigmoid(gx + c Wc)              gx: the x part of the update/reset gates with their bias
//   u, r = g[:C], g[C:]
//   hx1 = tanh(px)                        px: MLPx's first layer with its bias (formed in JAX)
//   hx2 = tanh(hx1 K2x + b2x)
//   hc1 = tanh((r * c) K1c + b1c)
//   hc2 = tanh(hc1 K2c + b2c)
//   n   = tanh(hx2 K3x + hc2 K3c + bn)
//   out = u * c + (1 - u) * n
// XLA's CPU backend runs each of these as its own kernel over all rows, streaming (rows, 80)
// matrices through memory between them (docs/performance.md). Here a tile of rows goes through
// the whole cell while its activations stay in the L1/L2 cache. The backward pass recomputes
// the tile's forward (only the inputs are kept between the passes), then accumulates the
// weight gradients per thread and sums them at the end.
//
// tanh is the 13/6-degree rational approximation Eigen and XLA's CPU backend use (accurate to a
// few ulp on [-8, 8], clamped outside); sigmoid(x) = 0.5 tanh(x / 2) + 0.5.

#include <algorithm>
#include <atomic>
#include <cstdint>
#include <cstring>
#include <thread>
#include <vector>

#include "xla/ffi/api/ffi.h"

namespace ffi = xla::ffi;

namespace {

constexpr int H1 = 80;   // the learner MLPs' hidden widths (mplp_graph.learners.nets.MLP_HIDDEN)
constexpr int H2 = 40;
constexpr int CMAX = 64; // the widest carry a tile buffer holds
constexpr int TILE = 16; // rows per tile
constexpr int64_t CHUNK = 512;  // rows a thread claims at a time

inline float fast_tanh(float a) {
  const float clamp = 7.99881172180175781f;
  float x = std::min(std::max(a, -clamp), clamp);
  float x2 = x * x;
  float p = -2.76076847742355e-16f;
  p = p * x2 + 2.00018790482477e-13f;
  p = p * x2 + -8.60467152213735e-11f;
  p = p * x2 + 5.12229709037114e-08f;
  p = p * x2 + 1.48572235717979e-05f;
  p = p * x2 + 6.37261928875436e-04f;
  p = p * x2 + 4.89352455891786e-03f;
  p = p * x;
  float q = 1.19825839466702e-06f;
  q = q * x2 + 1.18534705686654e-04f;
  q = q * x2 + 2.26843463243900e-03f;
  q = q * x2 + 4.89352518554385e-03f;
  float t = p / q;
  return std::abs(a) < 0.0004f ? a : t;
}

inline float sigmoid(float x) { return 0.5f * fast_tanh(0.5f * x) + 0.5f; }

typedef float v8 __attribute__((vector_size(32)));

inline v8 load8(const float* p) {
  v8 v;
  std::memcpy(&v, p, sizeof v);
  return v;
}
inline void store8(float* p, v8 v) { std::memcpy(p, &v, sizeof v); }
inline v8 splat(float a) { return v8{a, a, a, a, a, a, a, a}; }

// y[r, :8NV] = b + x[r, :K] @ W[K, 8NV] for R rows (W's rows padded to a multiple of 8 columns),
// ROWS rows at a time: the ROWS x NV accumulators stay in registers and each row of W is loaded
// once for ROWS rows of x.
template <int NV, int ROWS>
inline void dense(const float* __restrict x, int ldx, int K, const float* __restrict W, const float* __restrict b,
                  float* __restrict y, int ldy, int R) {
  int r = 0;
  for (; r + ROWS <= R; r += ROWS) {
    v8 acc[ROWS][NV];
    _Pragma("GCC unroll 16") for (int i = 0; i < ROWS; ++i)
      _Pragma("GCC unroll 16") for (int v = 0; v < NV; ++v) acc[i][v] = b ? load8(b + 8 * v) : splat(0.f);
    for (int k = 0; k < K; ++k) {
      v8 w[NV];
      _Pragma("GCC unroll 16") for (int v = 0; v < NV; ++v) w[v] = load8(W + k * 8 * NV + 8 * v);
      _Pragma("GCC unroll 16") for (int i = 0; i < ROWS; ++i) {
        const v8 a = splat(x[(r + i) * ldx + k]);
        _Pragma("GCC unroll 16") for (int v = 0; v < NV; ++v) acc[i][v] += a * w[v];
      }
    }
    _Pragma("GCC unroll 16") for (int i = 0; i < ROWS; ++i)
      _Pragma("GCC unroll 16") for (int v = 0; v < NV; ++v) store8(y + (r + i) * ldy + 8 * v, acc[i][v]);
  }
  for (; r < R; ++r) {  // the last rows, one at a time
    v8 acc[NV];
    _Pragma("GCC unroll 16") for (int v = 0; v < NV; ++v) acc[v] = b ? load8(b + 8 * v) : splat(0.f);
    for (int k = 0; k < K; ++k) {
      const v8 a = splat(x[r * ldx + k]);
      _Pragma("GCC unroll 16") for (int v = 0; v < NV; ++v) acc[v] += a * load8(W + k * 8 * NV + 8 * v);
    }
    _Pragma("GCC unroll 16") for (int v = 0; v < NV; ++v) store8(y + r * ldy + 8 * v, acc[v]);
  }
}

// dense for a run-time width of nv vectors (the carry's), up to 2 * CMAX / 8
inline void dense_any(const float* x, int ldx, int K, const float* W, int nv, const float* b, float* y, int ldy,
                      int R) {
  switch (nv) {
    case 1: return dense<1, 4>(x, ldx, K, W, b, y, ldy, R);
    case 2: return dense<2, 4>(x, ldx, K, W, b, y, ldy, R);
    case 3: return dense<3, 4>(x, ldx, K, W, b, y, ldy, R);
    case 4: return dense<4, 4>(x, ldx, K, W, b, y, ldy, R);
    case 5: return dense<5, 4>(x, ldx, K, W, b, y, ldy, R);
    case 6: return dense<6, 2>(x, ldx, K, W, b, y, ldy, R);
    case 7: return dense<7, 2>(x, ldx, K, W, b, y, ldy, R);
    case 8: return dense<8, 2>(x, ldx, K, W, b, y, ldy, R);
    case 9: return dense<9, 2>(x, ldx, K, W, b, y, ldy, R);
    case 10: return dense<10, 2>(x, ldx, K, W, b, y, ldy, R);
    case 11: return dense<11, 2>(x, ldx, K, W, b, y, ldy, R);
    case 12: return dense<12, 2>(x, ldx, K, W, b, y, ldy, R);
    case 13: return dense<13, 2>(x, ldx, K, W, b, y, ldy, R);
    case 14: return dense<14, 2>(x, ldx, K, W, b, y, ldy, R);
    case 15: return dense<15, 2>(x, ldx, K, W, b, y, ldy, R);
    default: return dense<16, 1>(x, ldx, K, W, b, y, ldy, R);
  }
}

// dW[K, 8NV] += x[:R, :K]^T @ d[:R, :8NV], KS rows of dW at a time (each row of d loaded once for KS)
template <int NV, int KS>
inline void outer_acc(const float* __restrict x, int ldx, int K, const float* __restrict d, int ldd,
                      float* __restrict dW, int R) {
  int k = 0;
  for (; k + KS <= K; k += KS) {
    v8 acc[KS][NV];
    _Pragma("GCC unroll 16") for (int i = 0; i < KS; ++i)
      _Pragma("GCC unroll 16") for (int v = 0; v < NV; ++v) acc[i][v] = load8(dW + (k + i) * 8 * NV + 8 * v);
    for (int r = 0; r < R; ++r) {
      v8 dr[NV];
      _Pragma("GCC unroll 16") for (int v = 0; v < NV; ++v) dr[v] = load8(d + r * ldd + 8 * v);
      _Pragma("GCC unroll 16") for (int i = 0; i < KS; ++i) {
        const v8 a = splat(x[r * ldx + k + i]);
        _Pragma("GCC unroll 16") for (int v = 0; v < NV; ++v) acc[i][v] += a * dr[v];
      }
    }
    _Pragma("GCC unroll 16") for (int i = 0; i < KS; ++i)
      _Pragma("GCC unroll 16") for (int v = 0; v < NV; ++v) store8(dW + (k + i) * 8 * NV + 8 * v, acc[i][v]);
  }
  for (; k < K; ++k) {
    v8 acc[NV];
    _Pragma("GCC unroll 16") for (int v = 0; v < NV; ++v) acc[v] = load8(dW + k * 8 * NV + 8 * v);
    for (int r = 0; r < R; ++r) {
      const v8 a = splat(x[r * ldx + k]);
      _Pragma("GCC unroll 16") for (int v = 0; v < NV; ++v) acc[v] += a * load8(d + r * ldd + 8 * v);
    }
    _Pragma("GCC unroll 16") for (int v = 0; v < NV; ++v) store8(dW + k * 8 * NV + 8 * v, acc[v]);
  }
}

inline void outer_any(const float* x, int ldx, int K, const float* d, int ldd, int nv, float* dW, int R) {
  switch (nv) {
    case 1: return outer_acc<1, 4>(x, ldx, K, d, ldd, dW, R);
    case 2: return outer_acc<2, 4>(x, ldx, K, d, ldd, dW, R);
    case 3: return outer_acc<3, 4>(x, ldx, K, d, ldd, dW, R);
    case 4: return outer_acc<4, 4>(x, ldx, K, d, ldd, dW, R);
    case 5: return outer_acc<5, 4>(x, ldx, K, d, ldd, dW, R);
    case 6: return outer_acc<6, 2>(x, ldx, K, d, ldd, dW, R);
    case 7: return outer_acc<7, 2>(x, ldx, K, d, ldd, dW, R);
    case 8: return outer_acc<8, 2>(x, ldx, K, d, ldd, dW, R);
    case 9: return outer_acc<9, 2>(x, ldx, K, d, ldd, dW, R);
    case 10: return outer_acc<10, 2>(x, ldx, K, d, ldd, dW, R);
    case 11: return outer_acc<11, 2>(x, ldx, K, d, ldd, dW, R);
    case 12: return outer_acc<12, 2>(x, ldx, K, d, ldd, dW, R);
    case 13: return outer_acc<13, 2>(x, ldx, K, d, ldd, dW, R);
    case 14: return outer_acc<14, 2>(x, ldx, K, d, ldd, dW, R);
    case 15: return outer_acc<15, 2>(x, ldx, K, d, ldd, dW, R);
    default: return outer_acc<16, 1>(x, ldx, K, d, ldd, dW, R);
  }
}

inline void col_sum(const float* __restrict d, int ldd, int N, float* __restrict db, int R) {
  for (int r = 0; r < R; ++r)
    for (int j = 0; j < N; ++j) db[j] += d[r * ldd + j];
}

inline int pad8(int n) { return (n + 7) / 8 * 8; }

// out[K, ldo] = W[K, N] with the columns padded by zeros to ldo; transposed: out[N, ldo] = W^T
std::vector<float> padded(const float* W, int K, int N, int ldo, bool transposed = false) {
  std::vector<float> out((transposed ? N : K) * ldo, 0.f);
  for (int k = 0; k < K; ++k)
    for (int j = 0; j < N; ++j) {
      if (transposed)
        out[j * ldo + k] = W[k * N + j];
      else
        out[k * ldo + j] = W[k * N + j];
    }
  return out;
}

struct Weights {
  int C;
  const float *wc, *k2x, *b2x, *k1c, *b1c, *k2c, *b2c, *k3x, *k3c, *bn;
};

// the weights as the tile loops read them: widths of C or 2C padded to Cp, Gp (multiples of 8),
// and the transposes the backward pass multiplies by
struct Packed {
  int C, Cp, G, Gp;
  const float *k2x, *b2x, *k1c, *b1c, *k2c, *b2c;
  std::vector<float> wc, k3x, k3c, bn;               // (C, Gp), (H2, Cp), (H2, Cp), (Cp)
  std::vector<float> k3xT, k3cT, k2xT, k2cT, k1cT, wcT;  // (C, H2), (C, H2), (H2, H1), (H2, H1), (H1, Cp), (G, Cp)
  Packed(const Weights& w, bool backward)
      : C(w.C), Cp(pad8(w.C)), G(2 * w.C), Gp(pad8(2 * w.C)),
        k2x(w.k2x), b2x(w.b2x), k1c(w.k1c), b1c(w.b1c), k2c(w.k2c), b2c(w.b2c),
        wc(padded(w.wc, C, G, Gp)), k3x(padded(w.k3x, H2, C, Cp)), k3c(padded(w.k3c, H2, C, Cp)),
        bn(padded(w.bn, 1, C, Cp)) {
    if (!backward) return;
    k3xT = padded(w.k3x, H2, C, H2, true);
    k3cT = padded(w.k3c, H2, C, H2, true);
    k2xT = padded(w.k2x, H1, H2, H1, true);
    k2cT = padded(w.k2c, H1, H2, H1, true);
    k1cT = padded(w.k1c, C, H1, Cp, true);
    wcT = padded(w.wc, C, G, Cp, true);
  }
};

// one thread's weight gradients, in Packed's padded layouts
struct Grads {
  std::vector<float> wc, k2x, b2x, k1c, b1c, k2c, b2c, k3x, k3c, bn;
  explicit Grads(const Packed& p)
      : wc(p.C * p.Gp, 0.f), k2x(H1 * H2, 0.f), b2x(H2, 0.f), k1c(p.C * H1, 0.f), b1c(H1, 0.f),
        k2c(H1 * H2, 0.f), b2c(H2, 0.f), k3x(H2 * p.Cp, 0.f), k3c(H2 * p.Cp, 0.f), bn(p.Cp, 0.f) {}
};

struct Tile {
  alignas(64) float g[TILE][2 * CMAX];
  alignas(64) float hx1[TILE][H1];
  alignas(64) float hx2[TILE][H2];
  alignas(64) float rc[TILE][CMAX];
  alignas(64) float hc1[TILE][H1];
  alignas(64) float hc2[TILE][H2];
  alignas(64) float n[TILE][CMAX];
  alignas(64) float tmp[TILE][CMAX];
};

// the forward pass of a tile's R rows: fills the tile's activations
void forward_tile(const Packed& w, const float* gx, const float* px, const float* c, int R, Tile& t) {
  const int C = w.C, G = w.G;
  dense_any(c, C, C, w.wc.data(), w.Gp / 8, nullptr, &t.g[0][0], 2 * CMAX, R);
  for (int r = 0; r < R; ++r)
    for (int j = 0; j < G; ++j) t.g[r][j] = sigmoid(t.g[r][j] + gx[r * G + j]);
  for (int r = 0; r < R; ++r)
    for (int j = 0; j < H1; ++j) t.hx1[r][j] = fast_tanh(px[r * H1 + j]);
  dense<H2 / 8, 4>(&t.hx1[0][0], H1, H1, w.k2x, w.b2x, &t.hx2[0][0], H2, R);
  for (int r = 0; r < R; ++r)
    for (int j = 0; j < H2; ++j) t.hx2[r][j] = fast_tanh(t.hx2[r][j]);
  for (int r = 0; r < R; ++r)
    for (int k = 0; k < C; ++k) t.rc[r][k] = t.g[r][C + k] * c[r * C + k];
  dense<H1 / 8, 2>(&t.rc[0][0], CMAX, C, w.k1c, w.b1c, &t.hc1[0][0], H1, R);
  for (int r = 0; r < R; ++r)
    for (int j = 0; j < H1; ++j) t.hc1[r][j] = fast_tanh(t.hc1[r][j]);
  dense<H2 / 8, 4>(&t.hc1[0][0], H1, H1, w.k2c, w.b2c, &t.hc2[0][0], H2, R);
  for (int r = 0; r < R; ++r)
    for (int j = 0; j < H2; ++j) t.hc2[r][j] = fast_tanh(t.hc2[r][j]);
  dense_any(&t.hx2[0][0], H2, H2, w.k3x.data(), w.Cp / 8, w.bn.data(), &t.n[0][0], CMAX, R);
  dense_any(&t.hc2[0][0], H2, H2, w.k3c.data(), w.Cp / 8, nullptr, &t.tmp[0][0], CMAX, R);
  for (int r = 0; r < R; ++r)
    for (int j = 0; j < C; ++j) t.n[r][j] = fast_tanh(t.n[r][j] + t.tmp[r][j]);
}

void forward_rows(const Packed& w, const float* gx, const float* px, const float* c, float* out, int64_t r0,
                  int64_t r1) {
  const int C = w.C;
  Tile t;
  for (int64_t s = r0; s < r1; s += TILE) {
    const int R = static_cast<int>(std::min<int64_t>(TILE, r1 - s));
    const float* cs = c + s * C;
    forward_tile(w, gx + s * w.G, px + s * H1, cs, R, t);
    float* o = out + s * C;
    for (int r = 0; r < R; ++r)
      for (int j = 0; j < C; ++j) {
        const float u = t.g[r][j];
        o[r * C + j] = u * cs[r * C + j] + (1.f - u) * t.n[r][j];
      }
  }
}

void backward_rows(const Packed& w, const float* gx, const float* px, const float* c, const float* dout,
                   float* dgx, float* dpx, float* dc, Grads& gr, int64_t r0, int64_t r1) {
  const int C = w.C, G = w.G, cv = w.Cp / 8;
  Tile t;
  alignas(64) float dnp[TILE][CMAX] = {};  // d(n's pre-activation); padding columns stay 0
  alignas(64) float dg[TILE][2 * CMAX] = {};  // d(gates' pre-activation); likewise
  alignas(64) float dhx2[TILE][H2], dhc2[TILE][H2], dh1[TILE][H1];
  alignas(64) float drc[TILE][CMAX], dct[TILE][CMAX], back[TILE][CMAX];
  for (int64_t s = r0; s < r1; s += TILE) {
    const int R = static_cast<int>(std::min<int64_t>(TILE, r1 - s));
    const float* cs = c + s * C;
    const float* ds = dout + s * C;
    forward_tile(w, gx + s * G, px + s * H1, cs, R, t);
    for (int r = 0; r < R; ++r)
      for (int j = 0; j < C; ++j) {
        const float u = t.g[r][j], n = t.n[r][j], d = ds[r * C + j];
        dnp[r][j] = d * (1.f - u) * (1.f - n * n);
        dg[r][j] = d * (cs[r * C + j] - n) * u * (1.f - u);
        dct[r][j] = d * u;
      }
    col_sum(&dnp[0][0], CMAX, C, gr.bn.data(), R);
    outer_any(&t.hx2[0][0], H2, H2, &dnp[0][0], CMAX, cv, gr.k3x.data(), R);
    outer_any(&t.hc2[0][0], H2, H2, &dnp[0][0], CMAX, cv, gr.k3c.data(), R);
    dense<H2 / 8, 4>(&dnp[0][0], CMAX, C, w.k3xT.data(), nullptr, &dhx2[0][0], H2, R);
    dense<H2 / 8, 4>(&dnp[0][0], CMAX, C, w.k3cT.data(), nullptr, &dhc2[0][0], H2, R);
    for (int r = 0; r < R; ++r)
      for (int j = 0; j < H2; ++j) {
        dhx2[r][j] *= 1.f - t.hx2[r][j] * t.hx2[r][j];
        dhc2[r][j] *= 1.f - t.hc2[r][j] * t.hc2[r][j];
      }
    // MLPx, down to px
    col_sum(&dhx2[0][0], H2, H2, gr.b2x.data(), R);
    outer_acc<H2 / 8, 4>(&t.hx1[0][0], H1, H1, &dhx2[0][0], H2, gr.k2x.data(), R);
    dense<H1 / 8, 2>(&dhx2[0][0], H2, H2, w.k2xT.data(), nullptr, &dh1[0][0], H1, R);
    float* dp = dpx + s * H1;
    for (int r = 0; r < R; ++r)
      for (int j = 0; j < H1; ++j) dp[r * H1 + j] = dh1[r][j] * (1.f - t.hx1[r][j] * t.hx1[r][j]);
    // MLPc, down to r * c
    col_sum(&dhc2[0][0], H2, H2, gr.b2c.data(), R);
    outer_acc<H2 / 8, 4>(&t.hc1[0][0], H1, H1, &dhc2[0][0], H2, gr.k2c.data(), R);
    dense<H1 / 8, 2>(&dhc2[0][0], H2, H2, w.k2cT.data(), nullptr, &dh1[0][0], H1, R);
    for (int r = 0; r < R; ++r)
      for (int j = 0; j < H1; ++j) dh1[r][j] *= 1.f - t.hc1[r][j] * t.hc1[r][j];
    col_sum(&dh1[0][0], H1, H1, gr.b1c.data(), R);
    outer_acc<H1 / 8, 2>(&t.rc[0][0], CMAX, C, &dh1[0][0], H1, gr.k1c.data(), R);
    dense_any(&dh1[0][0], H1, H1, w.k1cT.data(), cv, nullptr, &drc[0][0], CMAX, R);
    for (int r = 0; r < R; ++r)
      for (int j = 0; j < C; ++j) {
        const float rr = t.g[r][C + j];
        dg[r][C + j] = drc[r][j] * cs[r * C + j] * rr * (1.f - rr);
        dct[r][j] += drc[r][j] * rr;
      }
    float* dgs = dgx + s * G;
    for (int r = 0; r < R; ++r)
      for (int j = 0; j < G; ++j) dgs[r * G + j] = dg[r][j];
    // the gates, down to c
    outer_any(cs, C, C, &dg[0][0], 2 * CMAX, w.Gp / 8, gr.wc.data(), R);
    dense_any(&dg[0][0], 2 * CMAX, G, w.wcT.data(), cv, nullptr, &back[0][0], CMAX, R);
    float* dcs = dc + s * C;
    for (int r = 0; r < R; ++r)
      for (int j = 0; j < C; ++j) dcs[r * C + j] = dct[r][j] + back[r][j];
  }
}

// Runs work(slot, r0, r1) over [0, rows) in chunks claimed by the calling thread and by tasks on
// XLA's intra-op thread pool (so that the kernel's threads are XLA's, not more threads competing
// with them). ``slot`` numbers the participants that got work, below max_slots(pool). The caller
// claims chunks too, so the call finishes even when no pool thread is free; it then waits for
// the tasks that are still working. A task that starts after the caller finished finds no chunk
// and touches nothing but the shared counters.
int max_slots(ffi::ThreadPool& pool) { return 1 + static_cast<int>(std::max<int64_t>(0, pool.num_threads())); }

struct Counters {
  explicit Counters(int64_t n) : rows(n) {}
  const int64_t rows;
  std::atomic<int64_t> next{0};
  std::atomic<int> active{0};
  std::atomic<int> slots{1};  // slot 0 is the caller's
};

template <typename F>
int parallel_rows(ffi::ThreadPool& pool, int64_t rows, F&& work) {
  const int tasks = static_cast<int>(std::min<int64_t>(max_slots(pool) - 1, rows / (2 * CHUNK)));
  auto counters = std::make_shared<Counters>(rows);
  auto run = [&work](Counters& k, int slot) {
    for (;;) {
      const int64_t r0 = k.next.fetch_add(CHUNK);
      if (r0 >= k.rows) return;
      if (slot < 0) slot = k.slots.fetch_add(1);
      work(slot, r0, std::min(k.rows, r0 + CHUNK));
    }
  };
  for (int i = 0; i < tasks; ++i) {
    pool.Schedule([counters, &run]() {
      // `active` is raised before looking for work: the caller does not return while a task
      // that saw work left is active, so `run` (on the caller's stack) is alive when called
      counters->active.fetch_add(1);
      if (counters->next.load() < counters->rows) run(*counters, -1);
      counters->active.fetch_sub(1);
    });
  }
  run(*counters, 0);
  while (counters->active.load() > 0) std::this_thread::yield();
  return std::min(counters->slots.load(), max_slots(pool));
}

ffi::Error check(int64_t rows, int C, ffi::Buffer<ffi::F32> gx, ffi::Buffer<ffi::F32> px) {
  if (C < 1 || C > CMAX) return ffi::Error::InvalidArgument("mplp_gru_cell: carry width must be in [1, 64]");
  if (gx.element_count() != static_cast<size_t>(rows * 2 * C) || px.element_count() != static_cast<size_t>(rows * H1))
    return ffi::Error::InvalidArgument("mplp_gru_cell: gx must be (rows, 2C) and px (rows, 80)");
  return ffi::Error::Success();
}

Weights weights(int C, ffi::Buffer<ffi::F32> wc, ffi::Buffer<ffi::F32> k2x, ffi::Buffer<ffi::F32> b2x,
                ffi::Buffer<ffi::F32> k1c, ffi::Buffer<ffi::F32> b1c, ffi::Buffer<ffi::F32> k2c,
                ffi::Buffer<ffi::F32> b2c, ffi::Buffer<ffi::F32> k3x, ffi::Buffer<ffi::F32> k3c,
                ffi::Buffer<ffi::F32> bn) {
  return Weights{C, wc.typed_data(), k2x.typed_data(), b2x.typed_data(), k1c.typed_data(), b1c.typed_data(),
                 k2c.typed_data(), b2c.typed_data(), k3x.typed_data(), k3c.typed_data(), bn.typed_data()};
}

ffi::Error GruCellForward(ffi::ThreadPool pool, ffi::Buffer<ffi::F32> gx, ffi::Buffer<ffi::F32> px, ffi::Buffer<ffi::F32> c,
                          ffi::Buffer<ffi::F32> wc, ffi::Buffer<ffi::F32> k2x, ffi::Buffer<ffi::F32> b2x,
                          ffi::Buffer<ffi::F32> k1c, ffi::Buffer<ffi::F32> b1c, ffi::Buffer<ffi::F32> k2c,
                          ffi::Buffer<ffi::F32> b2c, ffi::Buffer<ffi::F32> k3x, ffi::Buffer<ffi::F32> k3c,
                          ffi::Buffer<ffi::F32> bn, ffi::ResultBuffer<ffi::F32> out) {
  const auto dims = c.dimensions();
  const int C = static_cast<int>(dims.back());
  const int64_t rows = static_cast<int64_t>(c.element_count()) / C;
  if (auto e = check(rows, C, gx, px); e.failure()) return e;
  const Packed w(weights(C, wc, k2x, b2x, k1c, b1c, k2c, b2c, k3x, k3c, bn), false);
  const float *g = gx.typed_data(), *p = px.typed_data(), *cc = c.typed_data();
  float* o = out->typed_data();
  parallel_rows(pool, rows, [&](int, int64_t r0, int64_t r1) { forward_rows(w, g, p, cc, o, r0, r1); });
  return ffi::Error::Success();
}

ffi::Error GruCellBackward(ffi::ThreadPool pool, ffi::Buffer<ffi::F32> gx, ffi::Buffer<ffi::F32> px, ffi::Buffer<ffi::F32> c,
                           ffi::Buffer<ffi::F32> wc, ffi::Buffer<ffi::F32> k2x, ffi::Buffer<ffi::F32> b2x,
                           ffi::Buffer<ffi::F32> k1c, ffi::Buffer<ffi::F32> b1c, ffi::Buffer<ffi::F32> k2c,
                           ffi::Buffer<ffi::F32> b2c, ffi::Buffer<ffi::F32> k3x, ffi::Buffer<ffi::F32> k3c,
                           ffi::Buffer<ffi::F32> bn, ffi::Buffer<ffi::F32> dout,
                           ffi::ResultBuffer<ffi::F32> dgx, ffi::ResultBuffer<ffi::F32> dpx,
                           ffi::ResultBuffer<ffi::F32> dc, ffi::ResultBuffer<ffi::F32> dwc,
                           ffi::ResultBuffer<ffi::F32> dk2x, ffi::ResultBuffer<ffi::F32> db2x,
                           ffi::ResultBuffer<ffi::F32> dk1c, ffi::ResultBuffer<ffi::F32> db1c,
                           ffi::ResultBuffer<ffi::F32> dk2c, ffi::ResultBuffer<ffi::F32> db2c,
                           ffi::ResultBuffer<ffi::F32> dk3x, ffi::ResultBuffer<ffi::F32> dk3c,
                           ffi::ResultBuffer<ffi::F32> dbn) {
  const auto dims = c.dimensions();
  const int C = static_cast<int>(dims.back());
  const int64_t rows = static_cast<int64_t>(c.element_count()) / C;
  if (auto e = check(rows, C, gx, px); e.failure()) return e;
  const Packed w(weights(C, wc, k2x, b2x, k1c, b1c, k2c, b2c, k3x, k3c, bn), true);
  std::vector<Grads> grads;
  grads.reserve(max_slots(pool));
  for (int i = 0; i < max_slots(pool); ++i) grads.emplace_back(w);
  const float *g = gx.typed_data(), *p = px.typed_data(), *cc = c.typed_data(), *d = dout.typed_data();
  float *og = dgx->typed_data(), *op = dpx->typed_data(), *oc = dc->typed_data();
  const int used = parallel_rows(
      pool, rows, [&](int i, int64_t r0, int64_t r1) { backward_rows(w, g, p, cc, d, og, op, oc, grads[i], r0, r1); });
  // the threads' sums, with the padding columns dropped: (K, N) out of (K, ld)
  auto reduce = [&](std::vector<float> Grads::*field, int K, int N, int ld, ffi::ResultBuffer<ffi::F32>& out) {
    float* o = out->typed_data();
    for (int k = 0; k < K; ++k)
      for (int j = 0; j < N; ++j) {
        float s = 0.f;
        for (int i = 0; i < used; ++i) s += (grads[i].*field)[k * ld + j];
        o[k * N + j] = s;
      }
  };
  reduce(&Grads::wc, C, 2 * C, w.Gp, dwc);
  reduce(&Grads::k2x, H1, H2, H2, dk2x);
  reduce(&Grads::b2x, 1, H2, H2, db2x);
  reduce(&Grads::k1c, C, H1, H1, dk1c);
  reduce(&Grads::b1c, 1, H1, H1, db1c);
  reduce(&Grads::k2c, H1, H2, H2, dk2c);
  reduce(&Grads::b2c, 1, H2, H2, db2c);
  reduce(&Grads::k3x, H2, C, w.Cp, dk3x);
  reduce(&Grads::k3c, H2, C, w.Cp, dk3c);
  reduce(&Grads::bn, 1, C, w.Cp, dbn);
  return ffi::Error::Success();
}

}  // namespace

#define F32 ffi::Buffer<ffi::F32>
#define R32 ffi::ResultBuffer<ffi::F32>

XLA_FFI_DEFINE_HANDLER_SYMBOL(MplpGruCellForward, GruCellForward,
                              ffi::Ffi::Bind()
                                  .Ctx<ffi::ThreadPool>()
                                  .Arg<F32>().Arg<F32>().Arg<F32>()  // gx, px, c
                                  .Arg<F32>().Arg<F32>().Arg<F32>().Arg<F32>().Arg<F32>()
                                  .Arg<F32>().Arg<F32>().Arg<F32>().Arg<F32>().Arg<F32>()  // weights
                                  .Ret<F32>());

XLA_FFI_DEFINE_HANDLER_SYMBOL(MplpGruCellBackward, GruCellBackward,
                              ffi::Ffi::Bind()
                                  .Ctx<ffi::ThreadPool>()
                                  .Arg<F32>().Arg<F32>().Arg<F32>()
                                  .Arg<F32>().Arg<F32>().Arg<F32>().Arg<F32>().Arg<F32>()
                                  .Arg<F32>().Arg<F32>().Arg<F32>().Arg<F32>().Arg<F32>()
                                  .Arg<F32>()  // dout
                                  .Ret<F32>().Ret<F32>().Ret<F32>()  // dgx, dpx, dc
                                  .Ret<F32>().Ret<F32>().Ret<F32>().Ret<F32>().Ret<F32>()
                                  .Ret<F32>().Ret<F32>().Ret<F32>().Ret<F32>().Ret<F32>());
