// f32 GEMM as an XLA FFI target for the CPU backend (dlresearch.kernels).
//
// One handler, dlr_sgemm: C[b] = op(A[b]) @ op(B[b]) for row-major operands
// of shape [batch..., rows, cols] (all leading axes are batch axes); op
// transposes when trans_a / trans_b is 1. B may have batch 1 (shared by every
// batch of A). The BLAS runs on one thread per call; a large call is cut
// into parts (batches, else rows or columns of C) that the calling thread
// and XLA's own intra-op pool (the FFI's ThreadPool context: the threads
// that run XLA's dots) take from a shared counter, so a GEMM gets both
// cores when the pool has a thread free and runs whole on the caller when it
// has not (a part claimed late finds nothing left). The BLAS routine is not
// linked at build time: Python passes the address of a cblas_sgemm
// (OpenBLAS's or MKL's, loaded from its wheel with ctypes) through
// dlr_set_sgemm, so this file needs only a C++ compiler and the FFI headers
// of jaxlib (jax.ffi.include_dir()).
#include <cstdint>
#include <algorithm>
#include <atomic>
#include <cstring>
#include <memory>
#include <thread>

#include "xla/ffi/api/ffi.h"

namespace ffi = xla::ffi;

namespace {

// cblas_sgemm(order, transa, transb, m, n, k, alpha, a, lda, b, ldb, beta,
// c, ldc), 32-bit integers (scipy-openblas32, MKL's LP64 interface).
using Sgemm = void (*)(int, int, int, int, int, int, float, const float*, int,
                       const float*, int, float, float*, int);
constexpr int kRowMajor = 101, kNoTrans = 111, kTrans = 112;

Sgemm g_sgemm = nullptr;

// Below this many multiply-adds a call is not cut (scheduling costs more).
constexpr int64_t kMinSplitMacs = int64_t{1} << 21;
// A cut along rows or columns leaves at least this many in a part.
constexpr int64_t kMinPartRows = 32;

// One GEMM, C[b] = op(A[b]) op(B[b]), cut into `parts` along `axis` (0:
// batches, 1: rows of C, 2: columns of C), `per` of them a part. Shared
// (shared_ptr) with pool tasks, which may start after the call returned and
// then find no part left.
struct Gemm {
  Sgemm sgemm;
  bool trans_a, trans_b;
  int64_t batch, m, n, k, sa, sb, sc;
  const float *pa, *pb;
  float* out;
  int axis = 0;
  int64_t per = 1, parts = 1;
  std::atomic<int64_t> next{0}, done{0};

  void Part(int64_t i) const {
    int64_t b0 = 0, b1 = batch, r0 = 0, rows = m, c0 = 0, cols = n;
    if (axis == 0) { b0 = i * per; b1 = std::min(batch, b0 + per); }
    if (axis == 1) { r0 = i * per; rows = std::min(per, m - r0); }
    if (axis == 2) { c0 = i * per; cols = std::min(per, n - c0); }
    for (int64_t b = b0; b < b1; ++b) {
      sgemm(kRowMajor, trans_a ? kTrans : kNoTrans, trans_b ? kTrans : kNoTrans,
            static_cast<int>(rows), static_cast<int>(cols), static_cast<int>(k),
            1.0f, pa + b * sa + (trans_a ? r0 : r0 * k),
            static_cast<int>(trans_a ? m : k), pb + b * sb + (trans_b ? c0 * k : c0),
            static_cast<int>(trans_b ? k : n), 0.0f, out + b * sc + r0 * n + c0,
            static_cast<int>(n));
    }
  }

  // Runs parts until none is left.
  void Drain() {
    for (int64_t i; (i = next.fetch_add(1)) < parts;) {
      Part(i);
      done.fetch_add(1, std::memory_order_acq_rel);
    }
  }
};

ffi::Error SgemmImpl(ffi::ThreadPool pool, ffi::Buffer<ffi::F32> a, ffi::Buffer<ffi::F32> b,
                     ffi::ResultBuffer<ffi::F32> c, int32_t trans_a,
                     int32_t trans_b) {
  if (g_sgemm == nullptr) {
    return ffi::Error(ffi::ErrorCode::kFailedPrecondition,
                      "dlr_sgemm: no BLAS set (dlr_set_sgemm not called)");
  }
  auto da = a.dimensions(), db = b.dimensions(), dc = c->dimensions();
  if (da.size() < 3 || db.size() != da.size() || dc.size() != da.size()) {
    return ffi::Error(ffi::ErrorCode::kInvalidArgument,
                      "dlr_sgemm: operands must be [batch..., rows, cols]");
  }
  // Leading axes are batch axes (vmap adds one in front).
  const size_t r = da.size();
  int64_t batch = 1, batch_b = 1, batch_c = 1;
  for (size_t i = 0; i + 2 < r; ++i) {
    batch *= da[i];
    batch_b *= db[i];
    batch_c *= dc[i];
  }
  const int64_t m = trans_a ? da[r - 1] : da[r - 2];
  const int64_t k = trans_a ? da[r - 2] : da[r - 1];
  const int64_t kb = trans_b ? db[r - 1] : db[r - 2];
  const int64_t n = trans_b ? db[r - 2] : db[r - 1];
  if (kb != k || (batch_b != batch && batch_b != 1) || batch_c != batch ||
      dc[r - 2] != m || dc[r - 1] != n) {
    return ffi::Error(ffi::ErrorCode::kInvalidArgument,
                      "dlr_sgemm: shapes do not match");
  }
  float* out = c->typed_data();
  if (batch == 0 || m == 0 || n == 0) return ffi::Error::Success();
  if (k == 0) {
    std::memset(out, 0, sizeof(float) * batch * m * n);
    return ffi::Error::Success();
  }
  auto g = std::make_shared<Gemm>();
  g->sgemm = g_sgemm;
  g->trans_a = trans_a != 0;
  g->trans_b = trans_b != 0;
  g->batch = batch;
  g->m = m;
  g->n = n;
  g->k = k;
  g->sa = m * k;
  g->sb = batch_b == 1 ? 0 : k * n;
  g->sc = m * n;
  g->pa = a.typed_data();
  g->pb = b.typed_data();
  g->out = out;
  g->per = batch;  // one part: every batch
  // Parts: two per pool thread, along the batch, else the longer side of C.
  const int64_t threads = pool.num_threads();
  if (threads > 1 && batch * m * n * k >= kMinSplitMacs) {
    const int64_t want = 2 * threads;
    int axis = 0;
    int64_t units = batch;
    if (batch < want) {
      axis = m >= n ? 1 : 2;
      units = (m >= n ? m : n) / kMinPartRows;
    }
    const int64_t parts = std::min(want, units);
    if (parts > 1) {
      g->axis = axis;
      const int64_t len = axis == 0 ? batch : axis == 1 ? m : n;
      g->per = (len + parts - 1) / parts;
      g->parts = (len + g->per - 1) / g->per;
    }
  }
  if (g->parts == 1) {
    g->Part(0);
    return ffi::Error::Success();
  }
  for (int64_t t = 1; t < std::min(threads, g->parts); ++t) {
    pool.Schedule([g] { g->Drain(); });
  }
  g->Drain();
  // Parts another thread claimed are running now: wait for them.
  while (g->done.load(std::memory_order_acquire) < g->parts) {
    std::this_thread::yield();
  }
  return ffi::Error::Success();
}

}  // namespace

extern "C" void dlr_set_sgemm(void* fn) {
  g_sgemm = reinterpret_cast<Sgemm>(fn);
}

XLA_FFI_DEFINE_HANDLER_SYMBOL(dlr_sgemm, SgemmImpl,
                              ffi::Ffi::Bind()
                                  .Ctx<ffi::ThreadPool>()
                                  .Arg<ffi::Buffer<ffi::F32>>()
                                  .Arg<ffi::Buffer<ffi::F32>>()
                                  .Ret<ffi::Buffer<ffi::F32>>()
                                  .Attr<int32_t>("trans_a")
                                  .Attr<int32_t>("trans_b"));
