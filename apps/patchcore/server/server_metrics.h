// Counters for GET /metrics, in Prometheus' text format. Thread-safe.
#pragma once

#include <array>
#include <cstdint>
#include <map>
#include <mutex>
#include <string>
#include <utility>

namespace patchcore::serve {

class Metrics {
 public:
  /// One answered request: its model ("" when none), status code and wall time.
  void observe_request(const std::string& model, int status, double seconds);
  /// Seconds spent in a stage ("decode", "backbone", "knn", ..., "encode") on `items` images.
  void add_stage(const std::string& stage, double seconds, int64_t items);
  /// One engine call of `images` images gathered from `requests` requests.
  void observe_batch(int64_t requests, int64_t images);

  /// The text for GET /metrics; the gauges are read by the caller at the time of the scrape.
  std::string prometheus_text(size_t queue_depth, size_t in_flight) const;

  /// Upper bounds of the latency histogram's buckets, in seconds.
  static constexpr std::array<double, 12> kBuckets = {0.005, 0.01, 0.025, 0.05, 0.1, 0.25,
                                                      0.5,   1,    2.5,   5,    10,  30};

 private:
  mutable std::mutex mutex_;
  std::map<std::pair<std::string, int>, int64_t> requests_;  // (model, status) -> count
  std::array<int64_t, kBuckets.size()> bucket_counts_{};
  int64_t latency_count_ = 0;
  double latency_sum_ = 0;
  std::map<std::string, std::pair<double, int64_t>> stages_;  // stage -> (seconds, items)
  int64_t batches_ = 0, batched_requests_ = 0, batched_images_ = 0;
};

}  // namespace patchcore::serve
