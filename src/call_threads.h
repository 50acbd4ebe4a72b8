// How many threads one library call runs on, set for that call only.
#pragma once

#include "omp_threads.h"

namespace patchcore {

/// The cores this process may use (its affinity mask): what a thread count of 0 means.
int available_cores();

/// The calling thread's OpenMP thread count for one library call (fit, predict, ...), restored
/// when the call ends: the library never changes the caller's settings or another thread's.
/// requested > 0 is taken as given. 0 means all cores, shared among the calls in flight in the
/// process: a call gets available_cores() / (calls running, itself included), at least 1, so
/// that two threads that each ask for all cores (a server's requests) do not start two full
/// OpenMP teams on the same cores. The share is taken when the scope starts and again at each
/// update() (a long call's next batch). Inside an OpenMP parallel region the caller's nested
/// regions are inactive (OpenMP's default), so the call runs on its own thread.
class CallThreads {
 public:
  explicit CallThreads(int requested);
  ~CallThreads();
  CallThreads(const CallThreads&) = delete;
  CallThreads& operator=(const CallThreads&) = delete;
  /// Takes the share again (requested == 0) and sets it; returns the thread count now in force.
  int update();
  int count() const { return count_; }

 private:
  int requested_;
  int count_ = 1;
  OmpThreadsGuard guard_;
};

}  // namespace patchcore
