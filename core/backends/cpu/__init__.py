"""CPU backend: numpy arrays, BLAS for GEMM, numba for fused/looped kernels."""
