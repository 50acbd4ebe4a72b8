// Sets the calling thread's OpenMP thread count for a scope and restores it afterwards.
#pragma once

#include <omp.h>

namespace patchcore {

/// FAISS and the OpenMP build of OpenBLAS take their thread count from the calling thread's
/// omp_get_max_threads(), so a count is set around a call only: the library must not change
/// the caller's OpenMP settings. threads <= 0 leaves the count as it is.
class OmpThreadsGuard {
 public:
  explicit OmpThreadsGuard(int threads) : saved_(omp_get_max_threads()) {
    if (threads > 0) omp_set_num_threads(threads);
  }
  ~OmpThreadsGuard() { omp_set_num_threads(saved_); }
  OmpThreadsGuard(const OmpThreadsGuard&) = delete;
  OmpThreadsGuard& operator=(const OmpThreadsGuard&) = delete;

 private:
  int saved_;
};

}  // namespace patchcore
