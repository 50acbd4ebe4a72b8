#include "call_threads.h"

#include <omp.h>

#include <algorithm>
#include <atomic>

#include "error.h"

namespace patchcore {
namespace {

std::atomic<int> calls_in_flight{0};

}  // namespace

int available_cores() { return std::max(1, omp_get_num_procs()); }

CallThreads::CallThreads(int requested) : requested_(requested), guard_(0) {
  if (requested < 0)
    throw_usage("threads must be >= 0 (0: all cores), got " + std::to_string(requested));
  ++calls_in_flight;
  update();
}

CallThreads::~CallThreads() { --calls_in_flight; }

int CallThreads::update() {
  count_ = requested_ > 0 ? requested_
                          : std::max(1, available_cores() / std::max(1, calls_in_flight.load()));
  omp_set_num_threads(count_);
  return count_;
}

}  // namespace patchcore
