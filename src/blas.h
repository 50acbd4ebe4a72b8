// BLAS and LAPACK routines through their Fortran names, as FAISS itself declares them (Debian's
// FAISS links the system libblas / liblapack, which scripts/setup points at OpenBLAS's OpenMP
// build). Column-major, arguments by pointer.
#pragma once

extern "C" {
int sgemm_(const char* transa, const char* transb, const int* m, const int* n, const int* k,
           const float* alpha, const float* a, const int* lda, const float* b, const int* ldb,
           const float* beta, float* c, const int* ldc);
int dgemm_(const char* transa, const char* transb, const int* m, const int* n, const int* k,
           const double* alpha, const double* a, const int* lda, const double* b, const int* ldb,
           const double* beta, double* c, const int* ldc);
int ssyrk_(const char* uplo, const char* trans, const int* n, const int* k, const float* alpha,
           const float* a, const int* lda, const float* beta, float* c, const int* ldc);
int dsyevr_(const char* jobz, const char* range, const char* uplo, const int* n, double* a,
            const int* lda, const double* vl, const double* vu, const int* il, const int* iu,
            const double* abstol, int* m, double* w, double* z, const int* ldz, int* isuppz,
            double* work, const int* lwork, int* iwork, const int* liwork, int* info);
}
