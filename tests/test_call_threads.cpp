// Thread counts scoped to a library call: set on the calling thread, restored, shared when 0.
#include <gtest/gtest.h>
#include <omp.h>

#include <thread>

#include "call_threads.h"
#include "patchcore/patchcore.h"

namespace {

TEST(CallThreads, AGivenCountHoldsForTheScopeAndIsRestored) {
  omp_set_num_threads(3);
  {
    patchcore::CallThreads t(5);
    EXPECT_EQ(t.count(), 5);
    EXPECT_EQ(omp_get_max_threads(), 5);
  }
  EXPECT_EQ(omp_get_max_threads(), 3);
}

TEST(CallThreads, ZeroMeansAllCoresForALoneCall) {
  omp_set_num_threads(1);
  {
    patchcore::CallThreads t(0);
    EXPECT_EQ(t.count(), patchcore::available_cores());
    EXPECT_EQ(omp_get_max_threads(), patchcore::available_cores());
  }
  EXPECT_EQ(omp_get_max_threads(), 1);
}

// Two calls in flight that each ask for all cores get half each (at least one thread).
TEST(CallThreads, ConcurrentCallsShareTheCores) {
  const int cores = patchcore::available_cores();
  patchcore::CallThreads first(0);
  EXPECT_EQ(first.count(), cores);
  int second_count = 0, after_second = 0;
  std::thread other([&] {
    patchcore::CallThreads second(0);
    second_count = second.count();
    after_second = omp_get_max_threads();
  });
  other.join();
  EXPECT_EQ(second_count, std::max(1, cores / 2));
  EXPECT_EQ(after_second, second_count);
  // The first call's next batch takes the share of what runs then: itself alone again.
  EXPECT_EQ(first.update(), cores);
  // An explicit count is never shared.
  std::thread explicit_count([&] { second_count = patchcore::CallThreads(7).count(); });
  explicit_count.join();
  EXPECT_EQ(second_count, 7);
}

// A scope on one thread leaves every other thread's OpenMP count alone.
TEST(CallThreads, AnotherThreadsCountIsUntouched) {
  omp_set_num_threads(2);
  std::thread other([] { patchcore::CallThreads t(6); });
  other.join();
  EXPECT_EQ(omp_get_max_threads(), 2);
}

TEST(CallThreads, ANegativeCountIsAUsageError) {
  omp_set_num_threads(2);
  try {
    patchcore::CallThreads t(-1);
    FAIL();
  } catch (const patchcore::Error& e) {
    EXPECT_EQ(e.kind(), patchcore::ErrorKind::usage);
    EXPECT_NE(std::string(e.what()).find("threads"), std::string::npos);
  }
  EXPECT_EQ(omp_get_max_threads(), 2);
}

}  // namespace
