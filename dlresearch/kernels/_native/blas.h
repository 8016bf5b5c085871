// The BLAS routine the native kernels call (gemm.cc holds it; Python sets it
// through dlr_set_sgemm, see dlresearch/kernels/native.py).
#ifndef DLRESEARCH_KERNELS_BLAS_H_
#define DLRESEARCH_KERNELS_BLAS_H_

namespace dlr {

// cblas_sgemm(order, transa, transb, m, n, k, alpha, a, lda, b, ldb, beta,
// c, ldc), 32-bit integers (scipy-openblas32, MKL's LP64 interface).
using Sgemm = void (*)(int, int, int, int, int, int, float, const float*, int,
                       const float*, int, float, float*, int);
constexpr int kRowMajor = 101, kNoTrans = 111, kTrans = 112;

// The routine dlr_set_sgemm set, or nullptr.
Sgemm BlasSgemm();

}  // namespace dlr

#endif  // DLRESEARCH_KERNELS_BLAS_H_
