// f32 GEMM as an XLA FFI target for the CPU backend (dlresearch.kernels).
//
// One handler, dlr_sgemm: C[b] = op(A[b]) @ op(B[b]) for row-major operands
// of shape [batch..., rows, cols] (all leading axes are batch axes); op
// transposes when trans_a / trans_b is 1. B may have batch 1 (shared by every
// batch of A). The BLAS routine is not
// linked at build time: Python passes the address of a cblas_sgemm
// (OpenBLAS's or MKL's, loaded from its wheel with ctypes) through
// dlr_set_sgemm, so this file needs only a C++ compiler and the FFI headers
// of jaxlib (jax.ffi.include_dir()).
#include <cstdint>
#include <cstring>

#include "xla/ffi/api/ffi.h"

namespace ffi = xla::ffi;

namespace {

// cblas_sgemm(order, transa, transb, m, n, k, alpha, a, lda, b, ldb, beta,
// c, ldc), 32-bit integers (scipy-openblas32, MKL's LP64 interface).
using Sgemm = void (*)(int, int, int, int, int, int, float, const float*, int,
                       const float*, int, float, float*, int);
constexpr int kRowMajor = 101, kNoTrans = 111, kTrans = 112;

Sgemm g_sgemm = nullptr;

ffi::Error SgemmImpl(ffi::Buffer<ffi::F32> a, ffi::Buffer<ffi::F32> b,
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
  const int64_t sa = m * k, sb = batch_b == 1 ? 0 : k * n, sc = m * n;
  const float* pa = a.typed_data();
  const float* pb = b.typed_data();
  for (int64_t i = 0; i < batch; ++i) {
    g_sgemm(kRowMajor, trans_a ? kTrans : kNoTrans,
            trans_b ? kTrans : kNoTrans, static_cast<int>(m),
            static_cast<int>(n), static_cast<int>(k), 1.0f, pa + i * sa,
            static_cast<int>(trans_a ? m : k), pb + i * sb,
            static_cast<int>(trans_b ? k : n), 0.0f, out + i * sc,
            static_cast<int>(n));
  }
  return ffi::Error::Success();
}

}  // namespace

extern "C" void dlr_set_sgemm(void* fn) {
  g_sgemm = reinterpret_cast<Sgemm>(fn);
}

XLA_FFI_DEFINE_HANDLER_SYMBOL(dlr_sgemm, SgemmImpl,
                              ffi::Ffi::Bind()
                                  .Arg<ffi::Buffer<ffi::F32>>()
                                  .Arg<ffi::Buffer<ffi::F32>>()
                                  .Ret<ffi::Buffer<ffi::F32>>()
                                  .Attr<int32_t>("trans_a")
                                  .Attr<int32_t>("trans_b"));
