// The LSTM's two time loops as XLA FFI targets for the CPU backend
// (dlresearch.models.rnn.lstm_scan with --cpu_kernels native/auto).
//
// XLA runs a lax.scan as a while loop whose every step launches the gate
// GEMM and several small elementwise kernels; here a step is, per thread,
// one product with weights packed once per call (PanelGemm) and one pass
// over the gates, with no launch in between. What is a product over all
// steps (the input projection, the weight and input gradients) stays
// outside, as one large GEMM each (dlresearch.kernels.matmul). No BLAS is
// called here.
//
//   dlr_lstm_fwd(xp [T,B,4H], c0 [B,H], h0 [B,H], w [H,4H])
//       -> hs [T,B,H], cs [T,B,H], gates [T,B,4H]
//     xp = x W_x + b (gate order i, f, g, o); gates are the activated gates.
//   dlr_lstm_bwd(d_hs [T,B,H], cs, c0, gates, w, d_ct [B,H], d_ht [B,H])
//       -> dz [T,B,4H], dc0 [B,H], dh0 [B,H]
//     dz: the gradient of the pre-activation gates; dc0, dh0: of the carry.
//
// Threads: a step is cut into parts by hidden unit (every part computes the
// four gates of its units, so a part's elementwise work needs no other
// part); the calling thread and pool threads of XLA's intra-op pool claim
// parts from a shared counter, one step at a time (a step starts when the
// previous one is done). A pool thread that is late finds fewer parts, or
// none: the calling thread never waits for a thread to start, only for
// parts already claimed to finish.
#include <algorithm>
#include <atomic>
#include <cstdint>
#include <cstdlib>
#include <cstring>
#include <functional>
#include <initializer_list>
#include <memory>
#include <string>
#include <thread>
#include <vector>

#include "xla/ffi/api/ffi.h"

namespace ffi = xla::ffi;

namespace {

// The cell loops are compiled for AVX2+FMA and for the baseline, the
// product kernel also for AVX-512, and the loader picks what the CPU runs
// (GCC's function multiversioning, x86-64 only; elsewhere one build).
#if defined(__x86_64__) && defined(__GNUC__) && !defined(__clang__) && __GNUC__ >= 11
#define DLR_CELL __attribute__((target_clones("arch=x86-64-v3", "default")))
#define DLR_KERNEL \
  __attribute__((target_clones("arch=x86-64-v4", "arch=x86-64-v3", "default")))
#else
#define DLR_CELL
#define DLR_KERNEL
#endif

// Below this many multiply-adds per step a step is not cut.
constexpr int64_t kMinSplitMacs = int64_t{1} << 18;
// Hidden units per part: a multiple of this, and at least this many.
constexpr int64_t kUnitAlign = 16;

// exp, sigmoid and tanh written so that a loop over them vectorises (no
// libm call): exp by range reduction x = n ln2 + r and a degree-7
// polynomial for e^r (relative error ~2e-7 on [-87, 88]); tanh by the odd
// rational approximation of Eigen's float tanh (absolute error ~3e-8),
// clamped where tanh rounds to +-1. A NaN stays NaN.
inline float Exp(float x) {
  x = x < -87.0f ? -87.0f : x > 88.0f ? 88.0f : x;
  const float n = (x * 1.44269504f + 12582912.0f) - 12582912.0f;  // round
  float r = x - n * 0.693359375f;
  r = r - n * -2.12194440e-4f;
  float p = 1.9875691500e-4f;
  p = p * r + 1.3981999507e-3f;
  p = p * r + 8.3334519073e-3f;
  p = p * r + 4.1665795894e-2f;
  p = p * r + 1.6666665459e-1f;
  p = p * r + 5.0000001201e-1f;
  p = p * r * r + r + 1.0f;
  const int32_t bits = (static_cast<int32_t>(n) + 127) << 23;  // 2^n
  float scale;
  std::memcpy(&scale, &bits, sizeof(scale));
  return p * scale;
}

inline float Sigmoid(float x) { return 1.0f / (1.0f + Exp(-x)); }

inline float Tanh(float x) {
  constexpr float kClamp = 7.90531110763549805f;
  x = x < -kClamp ? -kClamp : x > kClamp ? kClamp : x;
  const float x2 = x * x;
  float p = -2.76076847742355e-16f;
  p = p * x2 + 2.00018790482477e-13f;
  p = p * x2 + -8.60467152213735e-11f;
  p = p * x2 + 5.12229709037114e-08f;
  p = p * x2 + 1.48572235717979e-05f;
  p = p * x2 + 6.37261928875436e-04f;
  p = p * x2 + 4.89352455891786e-03f;
  float q = 1.19825839466702e-06f;
  q = q * x2 + 1.18534705686654e-04f;
  q = q * x2 + 2.26843463243900e-03f;
  q = q * x2 + 4.89352518554385e-03f;
  return x * p / q;
}

// One time step of n hidden units of one row. Forward: the gates' two
// pre-activation terms, r* = h_{t-1} W_h and x* = x W_x + b, give the
// activated gates g*; c, h: the new state.
DLR_CELL void CellForward(int64_t n, const float* __restrict ri, const float* __restrict rf,
                          const float* __restrict rg, const float* __restrict ro,
                          const float* __restrict xi, const float* __restrict xf,
                          const float* __restrict xg, const float* __restrict xo,
                          float* __restrict gi, float* __restrict gf, float* __restrict gg,
                          float* __restrict go, const float* __restrict c_prev,
                          float* __restrict c, float* __restrict h) {
  for (int64_t u = 0; u < n; ++u) {
    const float i = Sigmoid(ri[u] + xi[u]), f = Sigmoid(rf[u] + xf[u]),
                g = Tanh(rg[u] + xg[u]), o = Sigmoid(ro[u] + xo[u]);
    const float cu = f * c_prev[u] + i * g;
    gi[u] = i, gf[u] = f, gg[u] = g, go[u] = o;
    c[u] = cu;
    h[u] = o * Tanh(cu);
  }
}

// Backward: from the activated gates, the state c_t and c_{t-1}, and the
// hidden-state gradient (dh from step t+1, d_ht from the outputs), the
// pre-activation gate gradients dz*; dc holds the cell gradient from step
// t+1 in and the one for step t-1 out.
DLR_CELL void CellBackward(int64_t n, const float* __restrict i_, const float* __restrict f_,
                           const float* __restrict g_, const float* __restrict o_,
                           const float* __restrict c_t, const float* __restrict c_prev,
                           const float* __restrict dh, const float* __restrict d_ht,
                           float* __restrict dc, float* __restrict dzi, float* __restrict dzf,
                           float* __restrict dzg, float* __restrict dzo) {
  for (int64_t u = 0; u < n; ++u) {
    const float i = i_[u], f = f_[u], g = g_[u], o = o_[u];
    const float h_grad = dh[u] + d_ht[u];
    const float tc = Tanh(c_t[u]);
    const float c_grad = dc[u] + h_grad * o * (1.0f - tc * tc);
    dzi[u] = c_grad * g * i * (1.0f - i);
    dzf[u] = c_grad * c_prev[u] * f * (1.0f - f);
    dzg[u] = c_grad * i * (1.0f - g * g);
    dzo[u] = h_grad * tc * o * (1.0f - o);
    dc[u] = c_grad * f;
  }
}

// The recurrent products. Every step multiplies a [B, H] state by the same
// weights, so each part's weights are packed once per call into panels of
// 32 columns (panel j: [K][32], contiguous, zero past the last column) that
// stream from cache through a register-blocked kernel. A BLAS sgemm packs
// its operands again on every call: with OpenBLAS's sgemm per step the
// loops ran at ~116 (forward) and ~87 (backward) GFLOP/s, with this kernel
// at ~150 and ~150 (2 cores, Zen 4, B 32, H 256, T 64; docs/speed.md).
constexpr int64_t kPanel = 32;
using V16 = float __attribute__((vector_size(64)));
using V16u = float __attribute__((vector_size(64), aligned(4)));  // any address

struct AlignedFree {
  void operator()(float* p) const { std::free(p); }
};
using Floats = std::unique_ptr<float[], AlignedFree>;

Floats AlignedFloats(int64_t n) {
  const size_t bytes = (static_cast<size_t>(std::max<int64_t>(n, 1)) * sizeof(float) + 63) / 64 * 64;
  return Floats(static_cast<float*>(std::aligned_alloc(64, bytes)));
}

int64_t Panels(int64_t cols) { return (cols + kPanel - 1) / kPanel; }

// Packs a k x cols matrix into `out` (Panels(cols) * k * kPanel floats);
// row(q, buffer) writes row q's cols values into buffer.
template <class Row>
void Pack(int64_t k, int64_t cols, Row row, float* out) {
  std::vector<float> buffer(Panels(cols) * kPanel, 0.0f);
  for (int64_t q = 0; q < k; ++q) {
    row(q, buffer.data());
    for (int64_t j = 0; j < Panels(cols); ++j) {
      std::memcpy(out + (j * k + q) * kPanel, buffer.data() + j * kPanel, kPanel * sizeof(float));
    }
  }
}

// c[rows, 32 panels] = a[rows, k] @ the packed matrix; c's rows are
// ldc >= 32 * panels apart (a partial last panel is written whole).
// Four rows by 32 columns of accumulators.
DLR_KERNEL void PanelGemm(int64_t rows, int64_t k, int64_t panels, const float* __restrict a,
                          int64_t lda, const float* __restrict packed, float* __restrict c,
                          int64_t ldc) {
  for (int64_t j = 0; j < panels; ++j) {
    const float* p = packed + j * k * kPanel;
    float* cj = c + j * kPanel;
    int64_t m = 0;
    for (; m + 4 <= rows; m += 4) {
      const float *a0 = a + m * lda, *a1 = a0 + lda, *a2 = a1 + lda, *a3 = a2 + lda;
      V16 c00 = {}, c01 = {}, c10 = {}, c11 = {}, c20 = {}, c21 = {}, c30 = {}, c31 = {};
      for (int64_t q = 0; q < k; ++q) {
        const V16 w0 = *reinterpret_cast<const V16*>(p + q * kPanel);
        const V16 w1 = *reinterpret_cast<const V16*>(p + q * kPanel + 16);
        c00 += a0[q] * w0, c01 += a0[q] * w1;
        c10 += a1[q] * w0, c11 += a1[q] * w1;
        c20 += a2[q] * w0, c21 += a2[q] * w1;
        c30 += a3[q] * w0, c31 += a3[q] * w1;
      }
      float* r = cj + m * ldc;
      *reinterpret_cast<V16u*>(r) = c00, *reinterpret_cast<V16u*>(r + 16) = c01;
      r += ldc;
      *reinterpret_cast<V16u*>(r) = c10, *reinterpret_cast<V16u*>(r + 16) = c11;
      r += ldc;
      *reinterpret_cast<V16u*>(r) = c20, *reinterpret_cast<V16u*>(r + 16) = c21;
      r += ldc;
      *reinterpret_cast<V16u*>(r) = c30, *reinterpret_cast<V16u*>(r + 16) = c31;
    }
    for (; m < rows; ++m) {
      const float* a0 = a + m * lda;
      V16 c00 = {}, c01 = {};
      for (int64_t q = 0; q < k; ++q) {
        c00 += a0[q] * *reinterpret_cast<const V16*>(p + q * kPanel);
        c01 += a0[q] * *reinterpret_cast<const V16*>(p + q * kPanel + 16);
      }
      *reinterpret_cast<V16u*>(cj + m * ldc) = c00;
      *reinterpret_cast<V16u*>(cj + m * ldc + 16) = c01;
    }
  }
}

// A loop of `steps` steps of `parts` parts each; step s starts when every
// part of step s-1 is done. Shared (shared_ptr) with pool tasks, which may
// start after the loop ended and then find nothing left.
struct Loop {
  std::function<void(int64_t, int64_t)> body;  // (step, part)
  int64_t steps = 0, parts = 1;
  std::atomic<int64_t> next{0}, done{0}, open{0};

  bool Claim(int64_t limit) {
    int64_t i = next.load(std::memory_order_relaxed);
    while (i < limit) {
      if (next.compare_exchange_weak(i, i + 1, std::memory_order_acq_rel)) {
        body(i / parts, i % parts);
        done.fetch_add(1, std::memory_order_acq_rel);
        return true;
      }
    }
    return false;
  }

  // A pool thread: parts of the open steps until every part is claimed.
  void Help() {
    const int64_t total = steps * parts;
    while (next.load(std::memory_order_relaxed) < total) {
      if (!Claim(open.load(std::memory_order_acquire))) std::this_thread::yield();
    }
  }

  // The calling thread: opens each step, takes what is unclaimed, waits for
  // the parts others took.
  static void Run(ffi::ThreadPool& pool, const std::shared_ptr<Loop>& loop) {
    for (int64_t t = 1; t < loop->parts; ++t) pool.Schedule([loop] { loop->Help(); });
    for (int64_t s = 0; s < loop->steps; ++s) {
      const int64_t limit = (s + 1) * loop->parts;
      loop->open.store(limit, std::memory_order_release);
      while (loop->Claim(limit)) {
      }
      while (loop->done.load(std::memory_order_acquire) < limit) std::this_thread::yield();
    }
  }
};

// Parts per step for hidden size h (a multiple of kUnitAlign units each).
int64_t NumParts(const ffi::ThreadPool& pool, int64_t batch, int64_t h) {
  const int64_t threads = pool.num_threads();
  if (threads < 2 || batch * 4 * h * h < kMinSplitMacs) return 1;
  return std::max<int64_t>(1, std::min(threads, h / kUnitAlign));
}

int64_t UnitsPerPart(int64_t h, int64_t parts) {
  const int64_t per = (h + parts - 1) / parts;
  return (per + kUnitAlign - 1) / kUnitAlign * kUnitAlign;
}

bool Is(ffi::Span<const int64_t> dims, std::initializer_list<int64_t> want) {
  return dims.size() == want.size() && std::equal(want.begin(), want.end(), dims.begin());
}

// One part of a loop's steps: its packed weights (k rows; `width` columns
// per hidden unit, packed by the thread that takes the part's first step)
// and its product, [B, ld] with ld = 32 * panels.
struct Part {
  Floats w, out;
  int64_t panels = 0, ld = 0;
};

std::shared_ptr<std::vector<Part>> MakeParts(int64_t batch, int64_t h, int64_t per, int64_t k,
                                             int64_t width) {
  auto parts = std::make_shared<std::vector<Part>>();
  for (int64_t u0 = 0; u0 < h; u0 += per) {
    Part part;
    part.panels = Panels(width * std::min(per, h - u0));
    part.ld = part.panels * kPanel;
    part.w = AlignedFloats(part.panels * k * kPanel);
    part.out = AlignedFloats(batch * part.ld);
    parts->push_back(std::move(part));
  }
  return parts;
}

ffi::Error LstmFwd(ffi::ThreadPool pool, ffi::Buffer<ffi::F32> xp,
                   ffi::Buffer<ffi::F32> c0, ffi::Buffer<ffi::F32> h0,
                   ffi::Buffer<ffi::F32> w, ffi::ResultBuffer<ffi::F32> hs,
                   ffi::ResultBuffer<ffi::F32> cs,
                   ffi::ResultBuffer<ffi::F32> gates) {
  auto dx = xp.dimensions();
  if (dx.size() != 3 || dx[2] % 4 != 0) {
    return ffi::Error(ffi::ErrorCode::kInvalidArgument,
                      "dlr_lstm_fwd: xp must be [T, B, 4H]");
  }
  const int64_t T = dx[0], B = dx[1], H = dx[2] / 4, G = 4 * H;
  if (!(Is(c0.dimensions(), {B, H}) && Is(h0.dimensions(), {B, H}) &&
        Is(w.dimensions(), {H, G}) && Is(hs->dimensions(), {T, B, H}) &&
        Is(cs->dimensions(), {T, B, H}) && Is(gates->dimensions(), {T, B, G}))) {
    return ffi::Error(ffi::ErrorCode::kInvalidArgument, "dlr_lstm_fwd: shapes do not match");
  }
  if (T == 0 || B == 0 || H == 0) return ffi::Error::Success();
  const float *x = xp.typed_data(), *pc0 = c0.typed_data(), *ph0 = h0.typed_data(),
              *pw = w.typed_data();
  float *phs = hs->typed_data(), *pcs = cs->typed_data(), *pz = gates->typed_data();
  auto loop = std::make_shared<Loop>();
  loop->steps = T;
  loop->parts = NumParts(pool, B, H);
  const int64_t per = UnitsPerPart(H, loop->parts);
  // Each part's columns of W_h (gate by gate, its units) and its
  // h_{t-1} W_h.
  auto parts = MakeParts(B, H, per, H, 4);
  loop->body = [=](int64_t t, int64_t p) {
    const int64_t u0 = p * per, n = std::min(per, H - u0);
    if (n <= 0) return;
    Part& part = (*parts)[p];
    if (t == 0) {
      Pack(H, 4 * n, [=](int64_t q, float* row) {
        for (int64_t k = 0; k < 4; ++k) {
          std::memcpy(row + k * n, pw + q * G + k * H + u0, n * sizeof(float));
        }
      }, part.w.get());
    }
    const float* h_prev = t == 0 ? ph0 : phs + (t - 1) * B * H;
    const float* c_prev = t == 0 ? pc0 : pcs + (t - 1) * B * H;
    float* r = part.out.get();
    PanelGemm(B, H, part.panels, h_prev, H, part.w.get(), r, part.ld);
    for (int64_t b = 0; b < B; ++b) {
      const float* rb = r + b * part.ld;
      const float* xb = x + t * B * G + b * G + u0;
      float* gb = pz + t * B * G + b * G + u0;
      CellForward(n, rb, rb + n, rb + 2 * n, rb + 3 * n, xb, xb + H, xb + 2 * H, xb + 3 * H,
                  gb, gb + H, gb + 2 * H, gb + 3 * H, c_prev + b * H + u0,
                  pcs + t * B * H + b * H + u0, phs + t * B * H + b * H + u0);
    }
  };
  Loop::Run(pool, loop);
  return ffi::Error::Success();
}

ffi::Error LstmBwd(ffi::ThreadPool pool, ffi::Buffer<ffi::F32> d_hs,
                   ffi::Buffer<ffi::F32> cs, ffi::Buffer<ffi::F32> c0,
                   ffi::Buffer<ffi::F32> gates, ffi::Buffer<ffi::F32> w,
                   ffi::Buffer<ffi::F32> d_ct, ffi::Buffer<ffi::F32> d_ht,
                   ffi::ResultBuffer<ffi::F32> dz, ffi::ResultBuffer<ffi::F32> dc0,
                   ffi::ResultBuffer<ffi::F32> dh0) {
  auto dd = d_hs.dimensions();
  if (dd.size() != 3) {
    return ffi::Error(ffi::ErrorCode::kInvalidArgument,
                      "dlr_lstm_bwd: d_hs must be [T, B, H]");
  }
  const int64_t T = dd[0], B = dd[1], H = dd[2], G = 4 * H;
  if (!(Is(cs.dimensions(), {T, B, H}) && Is(c0.dimensions(), {B, H}) &&
        Is(gates.dimensions(), {T, B, G}) && Is(w.dimensions(), {H, G}) &&
        Is(d_ct.dimensions(), {B, H}) && Is(d_ht.dimensions(), {B, H}) &&
        Is(dz->dimensions(), {T, B, G}) && Is(dc0->dimensions(), {B, H}) &&
        Is(dh0->dimensions(), {B, H}))) {
    return ffi::Error(ffi::ErrorCode::kInvalidArgument, "dlr_lstm_bwd: shapes do not match");
  }
  if (B == 0 || H == 0) return ffi::Error::Success();
  float *pdz = dz->typed_data(), *pdc = dc0->typed_data(), *pdh0 = dh0->typed_data();
  // The cell-state gradient is carried in dc0's buffer, each part in its
  // own units.
  std::memcpy(pdc, d_ct.typed_data(), B * H * sizeof(float));
  if (T == 0) {
    std::memcpy(pdh0, d_ht.typed_data(), B * H * sizeof(float));
    return ffi::Error::Success();
  }
  const float *pdhs = d_hs.typed_data(), *pcs = cs.typed_data(), *pc0 = c0.typed_data(),
              *pg = gates.typed_data(), *pw = w.typed_data(), *pdht = d_ht.typed_data();
  auto loop = std::make_shared<Loop>();
  loop->steps = T + 1;  // step s is time T-1-s; the last one only gives dh0
  loop->parts = NumParts(pool, B, H);
  const int64_t per = UnitsPerPart(H, loop->parts);
  // Each part's rows of W_h (its units) as the columns of W_h^T, and its
  // dh.
  auto parts = MakeParts(B, H, per, G, 1);
  loop->body = [=](int64_t s, int64_t p) {
    const int64_t u0 = p * per, n = std::min(per, H - u0);
    if (n <= 0) return;
    const int64_t t = T - 1 - s;
    Part& part = (*parts)[p];
    if (s == 0) {
      Pack(G, n, [=](int64_t q, float* row) {
        for (int64_t j = 0; j < n; ++j) row[j] = pw[(u0 + j) * G + q];
      }, part.w.get());
    }
    float* dh = part.out.get();
    const int64_t ldh = part.ld;
    if (s == 0) {
      for (int64_t b = 0; b < B; ++b) {
        std::memcpy(dh + b * ldh, pdht + b * H + u0, n * sizeof(float));
      }
    } else {  // dh[:, units] = dz[t+1] W[units, :]^T
      PanelGemm(B, G, part.panels, pdz + (t + 1) * B * G, G, part.w.get(), dh, ldh);
    }
    if (s == T) {
      for (int64_t b = 0; b < B; ++b) {
        std::memcpy(pdh0 + b * H + u0, dh + b * ldh, n * sizeof(float));
      }
      return;
    }
    const float* c_prev = t == 0 ? pc0 : pcs + (t - 1) * B * H;
    for (int64_t b = 0; b < B; ++b) {
      const float* gate = pg + t * B * G + b * G + u0;
      float* zi = pdz + t * B * G + b * G + u0;
      CellBackward(n, gate, gate + H, gate + 2 * H, gate + 3 * H,
                   pcs + t * B * H + b * H + u0, c_prev + b * H + u0,
                   dh + b * ldh, pdhs + t * B * H + b * H + u0, pdc + b * H + u0,
                   zi, zi + H, zi + 2 * H, zi + 3 * H);
    }
  };
  Loop::Run(pool, loop);
  return ffi::Error::Success();
}

}  // namespace

XLA_FFI_DEFINE_HANDLER_SYMBOL(dlr_lstm_fwd, LstmFwd,
                              ffi::Ffi::Bind()
                                  .Ctx<ffi::ThreadPool>()
                                  .Arg<ffi::Buffer<ffi::F32>>()  // xp
                                  .Arg<ffi::Buffer<ffi::F32>>()  // c0
                                  .Arg<ffi::Buffer<ffi::F32>>()  // h0
                                  .Arg<ffi::Buffer<ffi::F32>>()  // w
                                  .Ret<ffi::Buffer<ffi::F32>>()  // hs
                                  .Ret<ffi::Buffer<ffi::F32>>()  // cs
                                  .Ret<ffi::Buffer<ffi::F32>>());  // gates

XLA_FFI_DEFINE_HANDLER_SYMBOL(dlr_lstm_bwd, LstmBwd,
                              ffi::Ffi::Bind()
                                  .Ctx<ffi::ThreadPool>()
                                  .Arg<ffi::Buffer<ffi::F32>>()  // d_hs
                                  .Arg<ffi::Buffer<ffi::F32>>()  // cs
                                  .Arg<ffi::Buffer<ffi::F32>>()  // c0
                                  .Arg<ffi::Buffer<ffi::F32>>()  // gates
                                  .Arg<ffi::Buffer<ffi::F32>>()  // w
                                  .Arg<ffi::Buffer<ffi::F32>>()  // d_ct
                                  .Arg<ffi::Buffer<ffi::F32>>()  // d_ht
                                  .Ret<ffi::Buffer<ffi::F32>>()  // dz
                                  .Ret<ffi::Buffer<ffi::F32>>()  // dc0
                                  .Ret<ffi::Buffer<ffi::F32>>());  // dh0
