#include "threshold.h"

#include <algorithm>
#include <cmath>
#include <limits>
#include <string>

#include "error.h"
#include "metrics.h"

namespace patchcore {
namespace {

void check_finite(const std::vector<float>& scores, const char* what) {
  for (float s : scores)
    if (!std::isfinite(s)) throw_usage(std::string(what) + ": a score is not finite");
}

// The rule documented in threshold.h: max(mean + 3 sd, max + sd), with a fallback spread.
double holdout_threshold(const std::vector<float>& scores) {
  PATCHCORE_ASSERT(!scores.empty());
  const double n = static_cast<double>(scores.size());
  double sum = 0, top = -std::numeric_limits<double>::infinity();
  for (float s : scores) {
    sum += s;
    top = std::max(top, static_cast<double>(s));
  }
  const double mean = sum / n;
  double sd = 0;
  if (scores.size() > 1) {
    double ss = 0;  // two passes: no cancellation when the spread is tiny next to the mean
    for (float s : scores) ss += (s - mean) * (s - mean);
    sd = std::sqrt(ss / (n - 1));
  }
  if (!(sd > 0)) sd = 0.1 * std::abs(mean);
  const double threshold = std::max(mean + 3 * sd, top + sd);
  if (threshold > top) return threshold;
  return std::nextafter(top, std::numeric_limits<double>::infinity());
}

}  // namespace

double normalize_score(double score, double threshold, const Calibration& c) {
  const double range = c.max_score - c.min_score;
  // A zero (or broken) range would divide by zero: keep only the side of the threshold.
  if (!(range > 0) || !std::isfinite(range)) {
    if (score > threshold) return 1.0;
    if (score < threshold) return 0.0;
    return 0.5;
  }
  return std::clamp((score - threshold) / range + 0.5, 0.0, 1.0);
}

Calibration calibrate_from_normal(const std::vector<float>& image_scores,
                                  const std::vector<float>& pixel_scores) {
  if (image_scores.empty()) throw_usage("calibration: no held-out image score");
  check_finite(image_scores, "calibration");
  check_finite(pixel_scores, "calibration (pixels)");
  Calibration c;
  c.image_threshold = holdout_threshold(image_scores);
  c.pixel_threshold = pixel_scores.empty() ? c.image_threshold : holdout_threshold(pixel_scores);
  c.min_score = *std::min_element(image_scores.begin(), image_scores.end());
  c.max_score = 2 * c.image_threshold - c.min_score;
  c.source = "holdout";
  return c;
}

Calibration calibrate_from_labels(const std::vector<float>& image_scores,
                                  const std::vector<uint8_t>& labels,
                                  const std::vector<float>& pixel_scores,
                                  const std::vector<uint8_t>& pixel_labels) {
  if (image_scores.empty()) throw_usage("calibration: no image score");
  if (image_scores.size() != labels.size())
    throw_usage("calibration: " + std::to_string(image_scores.size()) + " image scores but " +
                std::to_string(labels.size()) + " labels");
  if (!pixel_labels.empty() && pixel_scores.size() != pixel_labels.size())
    throw_usage("calibration: " + std::to_string(pixel_scores.size()) + " pixel scores but " +
                std::to_string(pixel_labels.size()) + " pixel labels");
  check_finite(image_scores, "calibration");
  check_finite(pixel_scores, "calibration (pixels)");

  const auto image_f1 = best_f1(image_scores, labels);
  if (!image_f1) return calibrate_from_normal(image_scores, pixel_scores);

  Calibration c;
  c.image_threshold = image_f1->threshold;
  c.pixel_threshold = c.image_threshold;
  if (!pixel_labels.empty()) {
    const bool has_normal =
        std::any_of(pixel_labels.begin(), pixel_labels.end(), [](uint8_t l) { return l == 0; });
    if (has_normal) {
      if (const auto pixel_f1 = best_f1(pixel_scores, pixel_labels))
        c.pixel_threshold = pixel_f1->threshold;
    }
  }
  const auto [lo, hi] = std::minmax_element(image_scores.begin(), image_scores.end());
  c.min_score = *lo;
  c.max_score = *hi;
  c.source = "f1";
  return c;
}

}  // namespace patchcore
