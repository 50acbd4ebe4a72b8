#include "server_metrics.h"

#include <sstream>

namespace patchcore::serve {
namespace {

// Label values are model names and stage names (plain names), but escape as the format asks.
std::string label(const std::string& v) {
  std::string out;
  for (char c : v) {
    if (c == '\\' || c == '"') out += '\\';
    if (c == '\n') {
      out += "\\n";
      continue;
    }
    out += c;
  }
  return out;
}

void header(std::ostringstream& o, const char* name, const char* type, const char* help) {
  o << "# HELP " << name << " " << help << "\n# TYPE " << name << " " << type << "\n";
}

}  // namespace

void Metrics::observe_request(const std::string& model, int status, double seconds) {
  std::lock_guard lock(mutex_);
  ++requests_[{model, status}];
  for (size_t i = 0; i < kBuckets.size(); ++i)
    if (seconds <= kBuckets[i]) ++bucket_counts_[i];
  ++latency_count_;
  latency_sum_ += seconds;
}

void Metrics::add_stage(const std::string& stage, double seconds, int64_t items) {
  std::lock_guard lock(mutex_);
  auto& s = stages_[stage];
  s.first += seconds;
  s.second += items;
}

void Metrics::observe_batch(int64_t requests, int64_t images) {
  std::lock_guard lock(mutex_);
  ++batches_;
  batched_requests_ += requests;
  batched_images_ += images;
}

std::string Metrics::prometheus_text(size_t queue_depth, size_t in_flight) const {
  std::lock_guard lock(mutex_);
  std::ostringstream o;
  o.precision(9);
  header(o, "patchcore_requests_total", "counter", "Requests answered, by model and status code.");
  for (const auto& [key, n] : requests_)
    o << "patchcore_requests_total{model=\"" << label(key.first) << "\",code=\"" << key.second
      << "\"} " << n << "\n";
  header(o, "patchcore_request_errors_total", "counter",
         "Requests answered with a 4xx or 5xx code.");
  for (const auto& [key, n] : requests_)
    if (key.second >= 400)
      o << "patchcore_request_errors_total{model=\"" << label(key.first) << "\",code=\""
        << key.second << "\"} " << n << "\n";
  header(o, "patchcore_request_duration_seconds", "histogram", "Request wall time.");
  for (size_t i = 0; i < kBuckets.size(); ++i)
    o << "patchcore_request_duration_seconds_bucket{le=\"" << kBuckets[i] << "\"} "
      << bucket_counts_[i] << "\n";
  o << "patchcore_request_duration_seconds_bucket{le=\"+Inf\"} " << latency_count_ << "\n"
    << "patchcore_request_duration_seconds_sum " << latency_sum_ << "\n"
    << "patchcore_request_duration_seconds_count " << latency_count_ << "\n";
  header(o, "patchcore_queue_depth", "gauge", "Inference requests waiting for the engine.");
  o << "patchcore_queue_depth " << queue_depth << "\n";
  header(o, "patchcore_requests_in_flight", "gauge", "Inference requests being handled.");
  o << "patchcore_requests_in_flight " << in_flight << "\n";
  header(o, "patchcore_stage_seconds_total", "counter", "Wall time per pipeline stage.");
  for (const auto& [stage, s] : stages_)
    o << "patchcore_stage_seconds_total{stage=\"" << label(stage) << "\"} " << s.first << "\n";
  header(o, "patchcore_stage_items_total", "counter", "Images per pipeline stage.");
  for (const auto& [stage, s] : stages_)
    o << "patchcore_stage_items_total{stage=\"" << label(stage) << "\"} " << s.second << "\n";
  header(o, "patchcore_batches_total", "counter", "Engine calls (batches of requests).");
  o << "patchcore_batches_total " << batches_ << "\n";
  header(o, "patchcore_batched_requests_total", "counter", "Requests in those batches.");
  o << "patchcore_batched_requests_total " << batched_requests_ << "\n";
  header(o, "patchcore_batched_images_total", "counter", "Images in those batches.");
  o << "patchcore_batched_images_total " << batched_images_ << "\n";
  return o.str();
}

}  // namespace patchcore::serve
