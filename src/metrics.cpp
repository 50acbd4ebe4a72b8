#include "metrics.h"

#include <algorithm>
#include <array>
#include <bit>
#include <cmath>
#include <cstddef>
#include <limits>
#include <opencv2/core.hpp>
#include <opencv2/imgproc.hpp>
#include <string>

#include "error.h"

namespace patchcore {
namespace {

// Maps a float to an unsigned key with the same order, so that a radix sort can order floats.
// -0 and +0 share a key: they are the same threshold.
uint32_t sortable_key(float f) {
  if (f == 0.0f) f = 0.0f;
  const auto bits = std::bit_cast<uint32_t>(f);
  return (bits & 0x80000000u) ? ~bits : (bits | 0x80000000u);
}

// Stable LSD radix sort on a 32-bit key, 3 passes of 11 bits. Pixel metrics sort tens of
// millions of scores, where this is several times faster than std::sort.
template <typename T, typename KeyFn>
void radix_sort(std::vector<T>& v, KeyFn key) {
  if (v.size() < 512) {
    std::stable_sort(v.begin(), v.end(), [&](const T& a, const T& b) { return key(a) < key(b); });
    return;
  }
  constexpr int kBits = 11;
  constexpr uint32_t kMask = (1u << kBits) - 1;
  std::vector<T> tmp(v.size());
  for (int shift = 0; shift < 32; shift += kBits) {
    std::array<size_t, kMask + 1> count{};
    for (const T& x : v) ++count[(key(x) >> shift) & kMask];
    // A digit shared by every element leaves the order unchanged: skip the scatter.
    if (std::find(count.begin(), count.end(), v.size()) != count.end()) continue;
    size_t sum = 0;
    for (auto& c : count) {
      const size_t n = c;
      c = sum;
      sum += n;
    }
    for (const T& x : v) tmp[count[(key(x) >> shift) & kMask]++] = x;
    v.swap(tmp);
  }
}

void sort_scores(std::vector<float>& v) {
  radix_sort(v, [](float f) { return sortable_key(f); });
}

void check_scores(const std::vector<float>& scores, size_t n_labels, const char* what) {
  if (scores.size() != n_labels)
    throw_usage(std::string(what) + ": " + std::to_string(scores.size()) + " scores but " +
                std::to_string(n_labels) + " labels");
  for (float s : scores)
    if (std::isnan(s)) throw_usage(std::string(what) + ": a score is NaN");
}

// Scores of each class, increasing.
struct Split {
  std::vector<float> neg, pos;
};

Split split_sorted(const std::vector<float>& scores, const std::vector<uint8_t>& labels,
                   const char* what) {
  check_scores(scores, labels.size(), what);
  const size_t n_pos = static_cast<size_t>(
      std::count_if(labels.begin(), labels.end(), [](uint8_t l) { return l != 0; }));
  Split s;
  s.pos.reserve(n_pos);
  s.neg.reserve(scores.size() - n_pos);
  for (size_t i = 0; i < scores.size(); ++i) (labels[i] ? s.pos : s.neg).push_back(scores[i]);
  sort_scores(s.pos);
  sort_scores(s.neg);
  return s;
}

// Calls f(value, n_pos_equal, n_neg_equal) once per distinct score, decreasing.
template <typename F>
void for_each_distinct_desc(const Split& s, F f) {
  size_t i = s.neg.size(), j = s.pos.size();  // one past the next element to visit
  while (i > 0 || j > 0) {
    float v;
    if (i == 0) {
      v = s.pos[j - 1];
    } else if (j == 0) {
      v = s.neg[i - 1];
    } else {
      v = std::max(s.neg[i - 1], s.pos[j - 1]);
    }
    uint64_t cn = 0, cp = 0;
    while (i > 0 && s.neg[i - 1] == v) --i, ++cn;
    while (j > 0 && s.pos[j - 1] == v) --j, ++cp;
    f(v, cp, cn);
  }
}

}  // namespace

std::optional<double> auroc(const std::vector<float>& scores, const std::vector<uint8_t>& labels) {
  const Split s = split_sorted(scores, labels, "auroc");
  if (s.pos.empty() || s.neg.empty()) return std::nullopt;
  const uint64_t n_neg = s.neg.size();
  // 2U as an exact integer: each positive gains 2 per lower negative and 1 per tied one.
  uint64_t twice_u = 0, neg_above = 0;
  for_each_distinct_desc(s, [&](float, uint64_t cp, uint64_t cn) {
    twice_u += cp * (2 * (n_neg - neg_above - cn) + cn);
    neg_above += cn;
  });
  return static_cast<double>(twice_u) /
         (2.0 * static_cast<double>(s.pos.size()) * static_cast<double>(n_neg));
}

Curve roc_curve(const std::vector<float>& scores, const std::vector<uint8_t>& labels) {
  const Split s = split_sorted(scores, labels, "roc_curve");
  Curve c;
  if (s.pos.empty() || s.neg.empty()) return c;
  const double n_pos = static_cast<double>(s.pos.size());
  const double n_neg = static_cast<double>(s.neg.size());
  c.x.push_back(0);
  c.y.push_back(0);
  c.thresholds.push_back(std::numeric_limits<double>::infinity());
  uint64_t tp = 0, fp = 0;
  for_each_distinct_desc(s, [&](float v, uint64_t cp, uint64_t cn) {
    tp += cp;
    fp += cn;
    c.x.push_back(static_cast<double>(fp) / n_neg);
    c.y.push_back(static_cast<double>(tp) / n_pos);
    c.thresholds.push_back(v);
  });
  return c;
}

std::optional<F1> best_f1(const std::vector<float>& scores, const std::vector<uint8_t>& labels) {
  const Split s = split_sorted(scores, labels, "best_f1");
  if (s.pos.empty()) return std::nullopt;
  const uint64_t n_pos = s.pos.size();
  // F1 = 2tp / (2tp + fp + fn) = 2tp / (tp + fp + n_pos); compared as exact fractions so that
  // ties resolve by the rule in the header, not by rounding. Products stay below 2^64 for
  // fewer than 2^31 scores.
  PATCHCORE_ASSERT(scores.size() < (uint64_t{1} << 31));
  uint64_t tp = 0, fp = 0, best_num = 0, best_den = 1, best_tp = 0, best_fp = 0;
  float best_threshold = 0;
  for_each_distinct_desc(s, [&](float v, uint64_t cp, uint64_t cn) {
    tp += cp;
    fp += cn;
    const uint64_t num = 2 * tp, den = tp + fp + n_pos;
    if (num * best_den >= best_num * den) {  // >=: a lower threshold wins a tie
      best_num = num;
      best_den = den;
      best_tp = tp;
      best_fp = fp;
      best_threshold = v;
    }
  });
  F1 r;
  r.f1 = static_cast<double>(best_num) / static_cast<double>(best_den);
  r.precision = best_tp + best_fp ? static_cast<double>(best_tp) / (best_tp + best_fp) : 0.0;
  r.recall = static_cast<double>(best_tp) / static_cast<double>(n_pos);
  r.threshold = best_threshold;
  return r;
}

std::optional<Pro> aupro(const std::vector<std::vector<float>>& maps,
                         const std::vector<std::vector<uint8_t>>& masks, int height, int width,
                         double fpr_limit) {
  return aupro(maps, masks, std::vector<std::pair<int, int>>(maps.size(), {height, width}),
               fpr_limit);
}

std::optional<Pro> aupro(const std::vector<std::vector<float>>& maps,
                         const std::vector<std::vector<uint8_t>>& masks,
                         const std::vector<std::pair<int, int>>& sizes, double fpr_limit) {
  if (!(fpr_limit > 0.0 && fpr_limit <= 1.0))
    throw_usage("aupro: the FPR limit must be in (0, 1], got " + std::to_string(fpr_limit));
  if (maps.size() != masks.size() || maps.size() != sizes.size())
    throw_usage("aupro: " + std::to_string(maps.size()) + " maps but " +
                std::to_string(masks.size()) + " masks and " + std::to_string(sizes.size()) +
                " sizes");
  if (maps.empty()) return std::nullopt;
  size_t n_anomalous = 0, n_all = 0;
  for (size_t i = 0; i < maps.size(); ++i) {
    const auto [height, width] = sizes[i];
    if (height <= 0 || width <= 0)
      throw_usage("aupro: bad map size " + std::to_string(height) + "x" + std::to_string(width));
    const size_t n_pixels = static_cast<size_t>(height) * static_cast<size_t>(width);
    n_all += n_pixels;
    if (maps[i].size() != n_pixels || masks[i].size() != n_pixels)
      throw_usage("aupro: map or mask " + std::to_string(i) + " does not have " +
                  std::to_string(height) + "x" + std::to_string(width) + " pixels");
    for (float v : maps[i])
      if (std::isnan(v)) throw_usage("aupro: map " + std::to_string(i) + " has a NaN score");
    n_anomalous += static_cast<size_t>(
        std::count_if(masks[i].begin(), masks[i].end(), [](uint8_t m) { return m != 0; }));
  }

  struct RegionPixel {
    float score;
    uint32_t region;
  };
  std::vector<float> normal;
  std::vector<RegionPixel> anomalous;
  std::vector<double> inverse_region_size;
  normal.reserve(n_all - n_anomalous);
  anomalous.reserve(n_anomalous);
  cv::Mat labels;
  std::vector<uint64_t> region_sizes;
  for (size_t i = 0; i < maps.size(); ++i) {
    const float* map = maps[i].data();
    if (std::none_of(masks[i].begin(), masks[i].end(), [](uint8_t m) { return m != 0; })) {
      normal.insert(normal.end(), maps[i].begin(), maps[i].end());
      continue;
    }
    // cv::Mat wants a mutable pointer; connectedComponents only reads its input.
    const auto [height, width] = sizes[i];
    const size_t n_pixels = masks[i].size();
    const cv::Mat mask(height, width, CV_8U, const_cast<uint8_t*>(masks[i].data()));
    const int n_labels = cv::connectedComponents(mask, labels, 8, CV_32S);
    const auto base = static_cast<uint32_t>(inverse_region_size.size());
    region_sizes.assign(static_cast<size_t>(n_labels), 0);
    const int* label = labels.ptr<int>(0);  // a freshly allocated Mat is continuous
    for (size_t p = 0; p < n_pixels; ++p) {
      const int l = label[p];
      if (l == 0) {
        normal.push_back(map[p]);
      } else {
        ++region_sizes[static_cast<size_t>(l)];
        anomalous.push_back({map[p], base + static_cast<uint32_t>(l - 1)});
      }
    }
    for (int l = 1; l < n_labels; ++l) inverse_region_size.push_back(1.0 / region_sizes[l]);
  }
  if (inverse_region_size.empty() || normal.empty()) return std::nullopt;

  sort_scores(normal);
  radix_sort(anomalous, [](const RegionPixel& p) { return sortable_key(p.score); });

  Pro result;
  Curve& c = result.curve;
  c.x.push_back(0);
  c.y.push_back(0);
  c.thresholds.push_back(std::numeric_limits<double>::infinity());
  const double n_normal = static_cast<double>(normal.size());
  const double n_regions = static_cast<double>(inverse_region_size.size());
  double area = 0, pro_sum = 0;
  uint64_t fp = 0;
  size_t i = normal.size(), j = anomalous.size();
  while (i > 0 || j > 0) {
    float v;
    if (i == 0) {
      v = anomalous[j - 1].score;
    } else if (j == 0) {
      v = normal[i - 1];
    } else {
      v = std::max(normal[i - 1], anomalous[j - 1].score);
    }
    while (i > 0 && normal[i - 1] == v) --i, ++fp;
    while (j > 0 && anomalous[j - 1].score == v)
      pro_sum += inverse_region_size[anomalous[--j].region];
    const double x0 = c.x.back(), y0 = c.y.back();
    const double x1 = static_cast<double>(fp) / n_normal;
    const double y1 = std::min(pro_sum / n_regions, 1.0);
    if (x1 > fpr_limit) {
      if (x0 < fpr_limit) {
        const double y = y0 + (fpr_limit - x0) * (y1 - y0) / (x1 - x0);
        area += (fpr_limit - x0) * (y0 + y) / 2;
        c.x.push_back(fpr_limit);
        c.y.push_back(y);
        c.thresholds.push_back(v);
      }
      break;
    }
    area += (x1 - x0) * (y0 + y1) / 2;
    c.x.push_back(x1);
    c.y.push_back(y1);
    c.thresholds.push_back(v);
  }
  result.aupro = area / fpr_limit;
  return result;
}

}  // namespace patchcore
