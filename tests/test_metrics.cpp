#include <gtest/gtest.h>

#include <algorithm>
#include <cmath>
#include <functional>
#include <limits>
#include <random>
#include <set>
#include <vector>

#include "metrics.h"
#include "patchcore/patchcore.h"

namespace patchcore {
namespace {

constexpr double kInf = std::numeric_limits<double>::infinity();

// ---------------------------------------------------------------------------------------------
// Plain references: quadratic or O(n * thresholds), written for clarity, not speed.

double reference_auroc(const std::vector<float>& s, const std::vector<uint8_t>& l) {
  double wins = 0, pairs = 0;
  for (size_t i = 0; i < s.size(); ++i) {
    if (!l[i]) continue;
    for (size_t j = 0; j < s.size(); ++j) {
      if (l[j]) continue;
      pairs += 1;
      if (s[i] > s[j]) wins += 1;
      if (s[i] == s[j]) wins += 0.5;
    }
  }
  return wins / pairs;
}

std::vector<float> distinct_descending(const std::vector<float>& s) {
  std::set<float, std::greater<float>> d(s.begin(), s.end());
  return {d.begin(), d.end()};
}

// Area of a polyline over x in [0, limit], linearly interpolated at the limit.
double reference_area(const std::vector<double>& x, const std::vector<double>& y, double limit) {
  double area = 0;
  for (size_t k = 1; k < x.size(); ++k) {
    if (x[k - 1] >= limit) break;
    if (x[k] <= limit) {
      area += (x[k] - x[k - 1]) * (y[k] + y[k - 1]) / 2;
    } else {
      const double yl = y[k - 1] + (limit - x[k - 1]) / (x[k] - x[k - 1]) * (y[k] - y[k - 1]);
      area += (limit - x[k - 1]) * (yl + y[k - 1]) / 2;
    }
  }
  return area / limit;
}

// Regions by flood fill (8-neighbours), independent of OpenCV: label per pixel, 0 = normal.
std::vector<int> flood_fill_regions(const std::vector<uint8_t>& mask, int h, int w, int* count) {
  std::vector<int> label(mask.size(), 0);
  int next = 0;
  for (int start = 0; start < h * w; ++start) {
    if (!mask[start] || label[start]) continue;
    label[start] = ++next;
    std::vector<int> stack{start};
    while (!stack.empty()) {
      const int p = stack.back();
      stack.pop_back();
      for (int dy = -1; dy <= 1; ++dy)
        for (int dx = -1; dx <= 1; ++dx) {
          const int y = p / w + dy, x = p % w + dx;
          if (y < 0 || y >= h || x < 0 || x >= w) continue;
          const int q = y * w + x;
          if (mask[q] && !label[q]) {
            label[q] = next;
            stack.push_back(q);
          }
        }
    }
  }
  *count = next;
  return label;
}

double reference_aupro(const std::vector<std::vector<float>>& maps,
                       const std::vector<std::vector<uint8_t>>& masks,
                       const std::vector<std::pair<int, int>>& sizes, double limit) {
  std::vector<float> all;
  std::vector<int> region;  // global region id + 1 per pixel, 0 = normal
  std::vector<double> region_size{0};
  int base = 0;
  for (size_t i = 0; i < maps.size(); ++i) {
    const auto [h, w] = sizes[i];
    int n = 0;
    const auto label = flood_fill_regions(masks[i], h, w, &n);
    region_size.resize(region_size.size() + n, 0);
    for (int p = 0; p < h * w; ++p) {
      all.push_back(maps[i][p]);
      region.push_back(label[p] ? base + label[p] : 0);
      if (label[p]) region_size[base + label[p]] += 1;
    }
    base += n;
  }
  double normals = 0;
  for (int r : region) normals += r == 0;
  std::vector<double> x{0}, y{0};
  for (float t : distinct_descending(all)) {
    double fp = 0;
    std::vector<double> hit(region_size.size(), 0);
    for (size_t p = 0; p < all.size(); ++p) {
      if (all[p] < t) continue;
      if (region[p] == 0)
        fp += 1;
      else
        hit[region[p]] += 1;
    }
    double pro = 0;
    for (int r = 1; r <= base; ++r) pro += hit[r] / region_size[r];
    x.push_back(fp / normals);
    y.push_back(pro / base);
  }
  return reference_area(x, y, limit);
}

double reference_aupro(const std::vector<std::vector<float>>& maps,
                       const std::vector<std::vector<uint8_t>>& masks, int h, int w, double limit) {
  return reference_aupro(maps, masks, std::vector<std::pair<int, int>>(maps.size(), {h, w}), limit);
}

// ---------------------------------------------------------------------------------------------
// AUROC

TEST(Auroc, HandComputed) {
  // Pairs (anomalous, normal): 0.35>0.1 yes, 0.35>0.4 no, 0.8>0.1 yes, 0.8>0.4 yes -> 3/4.
  EXPECT_DOUBLE_EQ(*auroc({0.1f, 0.4f, 0.35f, 0.8f}, {0, 0, 1, 1}), 0.75);
}

TEST(Auroc, TiesAcrossClassesCountHalf) {
  // Anomalous 0.5 beats 0.2 (1) and ties 0.5 (1/2); anomalous 0.9 beats both (2) -> 3.5/4.
  EXPECT_DOUBLE_EQ(*auroc({0.2f, 0.5f, 0.5f, 0.9f}, {0, 0, 1, 1}), 0.875);
  // Three normals {1, 2, 2}, two anomalous {2, 3}: 2 -> 1 + 1/2 + 1/2 = 2, 3 -> 3: 5/6.
  EXPECT_DOUBLE_EQ(*auroc({1, 2, 2, 2, 3}, {0, 0, 0, 1, 1}), 5.0 / 6.0);
}

TEST(Auroc, PerfectInverseConstant) {
  EXPECT_DOUBLE_EQ(*auroc({0, 1, 2, 3}, {0, 0, 1, 1}), 1.0);
  EXPECT_DOUBLE_EQ(*auroc({3, 2, 1, 0}, {0, 0, 1, 1}), 0.0);
  EXPECT_DOUBLE_EQ(*auroc({7, 7, 7, 7, 7}, {0, 1, 0, 1, 1}), 0.5);
}

TEST(Auroc, MissingClassIsEmpty) {
  EXPECT_FALSE(auroc({0.1f, 0.2f}, {0, 0}).has_value());
  EXPECT_FALSE(auroc({0.1f, 0.2f}, {1, 1}).has_value());
  EXPECT_FALSE(auroc({}, {}).has_value());
}

TEST(Auroc, NonZeroLabelIsAnomalous) {
  EXPECT_DOUBLE_EQ(*auroc({0.1f, 0.4f, 0.35f, 0.8f}, {0, 0, 255, 255}), 0.75);
}

TEST(Auroc, BadInputThrowsUsage) {
  try {
    auroc({0.1f, 0.2f}, {0});
    FAIL() << "no throw";
  } catch (const Error& e) {
    EXPECT_EQ(e.kind(), ErrorKind::usage);
  }
  EXPECT_THROW(auroc({0.1f, std::nanf("")}, {0, 1}), Error);
}

// Random scores with many ties (quantised), negatives and signed zeros, on both sides of the
// radix sort's small-input cut-off.
struct RandomCase {
  std::vector<float> scores;
  std::vector<uint8_t> labels;
};
RandomCase random_case(std::mt19937& rng, size_t n, double p_anomalous, int levels) {
  std::uniform_real_distribution<float> u(-1, 1);
  std::bernoulli_distribution anomalous(p_anomalous), quantise(0.5);
  RandomCase c;
  for (size_t i = 0; i < n; ++i) {
    const bool a = anomalous(rng);
    float s = u(rng) + (a ? 0.4f : 0.0f);
    if (quantise(rng)) s = std::round(s * levels) / levels;  // ties, and -0.0f
    c.scores.push_back(s);
    c.labels.push_back(a);
  }
  c.labels[0] = 1;  // both classes, whatever the draw
  c.labels[1] = 0;
  return c;
}

TEST(Auroc, MatchesPairwiseReference) {
  std::mt19937 rng(1);
  for (size_t n : {7u, 50u, 600u, 3000u}) {
    for (int rep = 0; rep < 3; ++rep) {
      const auto c = random_case(rng, n, 0.3, 8);
      const auto a = auroc(c.scores, c.labels);
      ASSERT_TRUE(a.has_value());
      EXPECT_NEAR(*a, reference_auroc(c.scores, c.labels), 1e-12) << n;
    }
  }
}

// ---------------------------------------------------------------------------------------------
// ROC curve

TEST(RocCurve, HandComputed) {
  // Descending: 0.8 (anomalous) -> (0, 1/2); 0.4 (normal) -> (1/2, 1/2); 0.35 (anomalous)
  // -> (1/2, 1); 0.1 (normal) -> (1, 1). sklearn's documented example gives the same rates.
  const Curve c = roc_curve({0.1f, 0.4f, 0.35f, 0.8f}, {0, 0, 1, 1});
  EXPECT_EQ(c.x, (std::vector<double>{0, 0, 0.5, 0.5, 1}));
  EXPECT_EQ(c.y, (std::vector<double>{0, 0.5, 0.5, 1, 1}));
  EXPECT_EQ(c.thresholds, (std::vector<double>{kInf, 0.8f, 0.4f, 0.35f, 0.1f}));
}

TEST(RocCurve, TiedScoresAreOnePoint) {
  // 0.9 -> (0, 1/2); 0.5 (one of each) -> (1/2, 1); 0.2 -> (1, 1).
  const Curve c = roc_curve({0.2f, 0.5f, 0.5f, 0.9f}, {0, 0, 1, 1});
  EXPECT_EQ(c.x, (std::vector<double>{0, 0, 0.5, 1}));
  EXPECT_EQ(c.y, (std::vector<double>{0, 0.5, 1, 1}));
  EXPECT_EQ(c.thresholds, (std::vector<double>{kInf, 0.9f, 0.5f, 0.2f}));
}

TEST(RocCurve, MissingClassIsEmpty) {
  const Curve c = roc_curve({0.2f, 0.5f}, {1, 1});
  EXPECT_TRUE(c.x.empty() && c.y.empty() && c.thresholds.empty());
}

TEST(RocCurve, MatchesReferenceAndAuroc) {
  std::mt19937 rng(2);
  for (size_t n : {30u, 900u}) {
    const auto rc = random_case(rng, n, 0.4, 5);
    const Curve c = roc_curve(rc.scores, rc.labels);
    const auto t = distinct_descending(rc.scores);
    ASSERT_EQ(c.x.size(), t.size() + 1);
    double n_pos = 0;
    for (auto l : rc.labels) n_pos += l;
    for (size_t k = 0; k < t.size(); ++k) {
      double tp = 0, fp = 0;
      for (size_t i = 0; i < n; ++i)
        if (rc.scores[i] >= t[k]) (rc.labels[i] ? tp : fp) += 1;
      EXPECT_EQ(c.thresholds[k + 1], t[k]);
      EXPECT_DOUBLE_EQ(c.x[k + 1], fp / (n - n_pos));
      EXPECT_DOUBLE_EQ(c.y[k + 1], tp / n_pos);
    }
    // The trapezoidal area under the curve is the Mann-Whitney AUROC.
    EXPECT_NEAR(reference_area(c.x, c.y, 1.0), *auroc(rc.scores, rc.labels), 1e-12);
  }
}

// ---------------------------------------------------------------------------------------------
// Best F1

TEST(BestF1, HandComputed) {
  // 3 anomalous. Threshold: tp fp -> F1 = 2tp / (tp + fp + 3)
  //   0.6: 0 1 -> 0;  0.5: 1 1 -> 0.4;  0.4: 2 1 -> 0.667;  0.3: 2 2 -> 0.571;
  //   0.2: 3 2 -> 0.75 (best; precision 3/5, recall 1);  0.1: 3 3 -> 0.667.
  const auto f = best_f1({0.1f, 0.2f, 0.3f, 0.4f, 0.5f, 0.6f}, {0, 1, 0, 1, 1, 0});
  ASSERT_TRUE(f.has_value());
  EXPECT_DOUBLE_EQ(f->f1, 0.75);
  EXPECT_DOUBLE_EQ(f->precision, 0.6);
  EXPECT_DOUBLE_EQ(f->recall, 1.0);
  EXPECT_EQ(f->threshold, static_cast<double>(0.2f));
}

TEST(BestF1, TieGoesToTheLowestThreshold) {
  // 2 anomalous. 0.4: tp 1 fp 0 -> 2/3; 0.3: 1 1 -> 1/2; 0.2: 1 2 -> 2/5; 0.1: 2 2 -> 2/3.
  const auto f = best_f1({0.1f, 0.2f, 0.3f, 0.4f}, {1, 0, 0, 1});
  ASSERT_TRUE(f.has_value());
  EXPECT_DOUBLE_EQ(f->f1, 2.0 / 3.0);
  EXPECT_EQ(f->threshold, static_cast<double>(0.1f));
  EXPECT_DOUBLE_EQ(f->precision, 0.5);
  EXPECT_DOUBLE_EQ(f->recall, 1.0);
}

TEST(BestF1, DegenerateInputs) {
  EXPECT_FALSE(best_f1({0.1f, 0.2f}, {0, 0}).has_value());
  EXPECT_FALSE(best_f1({}, {}).has_value());
  // Only anomalous: the lowest score flags everything, F1 = 1.
  const auto f = best_f1({0.3f, 0.1f}, {1, 1});
  ASSERT_TRUE(f.has_value());
  EXPECT_DOUBLE_EQ(f->f1, 1.0);
  EXPECT_EQ(f->threshold, static_cast<double>(0.1f));
  EXPECT_THROW(best_f1({0.1f}, {1, 0}), Error);
}

TEST(BestF1, MatchesBruteForce) {
  std::mt19937 rng(3);
  for (size_t n : {20u, 700u}) {
    const auto rc = random_case(rng, n, 0.3, 6);
    double n_pos = 0;
    for (auto l : rc.labels) n_pos += l;
    double best = -1, best_t = 0;
    const auto t = distinct_descending(rc.scores);
    for (float th : t) {
      double tp = 0, fp = 0;
      for (size_t i = 0; i < n; ++i)
        if (rc.scores[i] >= th) (rc.labels[i] ? tp : fp) += 1;
      const double f1 = 2 * tp / (tp + fp + n_pos);
      if (f1 >= best - 1e-15) {  // descending: a later (lower) threshold wins a tie
        best = f1;
        best_t = th;
      }
    }
    const auto f = best_f1(rc.scores, rc.labels);
    ASSERT_TRUE(f.has_value());
    EXPECT_NEAR(f->f1, best, 1e-12);
    EXPECT_EQ(f->threshold, best_t);
  }
}

// ---------------------------------------------------------------------------------------------
// AUPRO

TEST(Aupro, TwoRegionsOfDifferentSizes) {
  // Mask (3 x 4): region A = (0,0) alone; region B = the 2 x 2 block at the right. 7 normals.
  //   1 0 0 0        0.9  0.1  0.2  0.3
  //   0 0 1 1        0.4  0.5  0.8  0.6
  //   0 0 1 1        0.0  0.05 0.7  0.35
  // Descending: 0.9 -> A done, PRO (1 + 0)/2 = 0.5; 0.8, 0.7, 0.6 -> B at 1/4, 2/4, 3/4,
  // PRO 0.875 at FPR 0; 0.5 -> FPR 1/7; 0.4 -> 2/7; 0.35 -> B done, PRO 1 at 2/7; 0.3 -> 3/7.
  // Area up to 0.3: 0.875 * 2/7 + 1 * (0.3 - 2/7) = 0.3 - 0.25/7; / 0.3 = 1 - 0.25/2.1.
  const std::vector<uint8_t> mask{1, 0, 0, 0, 0, 0, 1, 1, 0, 0, 1, 1};
  const std::vector<float> map{0.9f, 0.1f, 0.2f, 0.3f,  0.4f, 0.5f,
                               0.8f, 0.6f, 0.0f, 0.05f, 0.7f, 0.35f};
  const auto p = aupro({map}, {mask}, 3, 4);
  ASSERT_TRUE(p.has_value());
  EXPECT_NEAR(p->aupro, 1 - 0.25 / 2.1, 1e-12);
  const std::vector<double> x{0, 0, 0, 0, 0, 1.0 / 7, 2.0 / 7, 2.0 / 7, 0.3};
  const std::vector<double> y{0, 0.5, 0.625, 0.75, 0.875, 0.875, 0.875, 1, 1};
  ASSERT_EQ(p->curve.x.size(), x.size());
  for (size_t k = 0; k < x.size(); ++k) {
    EXPECT_NEAR(p->curve.x[k], x[k], 1e-12) << k;
    EXPECT_NEAR(p->curve.y[k], y[k], 1e-12) << k;
  }
  EXPECT_EQ(p->curve.thresholds.front(), kInf);
  EXPECT_EQ(p->curve.thresholds.back(), static_cast<double>(0.3f));  // the lower neighbour

  // An all-normal image adds 12 normal pixels below everything: FPR over 19 normals now.
  // Area: 0.875 * 2/19 + (0.3 - 2/19) = 0.3 - 0.25/19; / 0.3.
  const std::vector<float> low(12, -1.0f);
  const auto q = aupro({map, low}, {mask, std::vector<uint8_t>(12, 0)}, 3, 4);
  ASSERT_TRUE(q.has_value());
  EXPECT_NEAR(q->aupro, 1 - 0.25 / 5.7, 1e-12);
}

TEST(Aupro, LimitBetweenTwoThresholdsIsInterpolated) {
  // 1 x 5: normals {0.5, 0.2, 0.1}, one region {0.5, 0.9} (a tie with a normal pixel).
  // 0.9 -> (0, 1/2); 0.5 -> (1/3, 1); 0.2 -> (2/3, 1); 0.1 -> (1, 1).
  // At FPR 0.3: PRO = 0.5 + 0.3 * 3 * 0.5 = 0.95; area 0.3 * (0.5 + 0.95) / 2 = 0.2175.
  const std::vector<float> map{0.5f, 0.2f, 0.1f, 0.5f, 0.9f};
  const std::vector<uint8_t> mask{0, 0, 0, 1, 1};
  const auto p = aupro({map}, {mask}, 1, 5);
  ASSERT_TRUE(p.has_value());
  EXPECT_NEAR(p->aupro, 0.2175 / 0.3, 1e-12);
  EXPECT_EQ(p->curve.x, (std::vector<double>{0, 0, 0.3}));
  ASSERT_EQ(p->curve.y.size(), 3u);
  EXPECT_NEAR(p->curve.y.back(), 0.95, 1e-12);
  // Whole curve: 1/3 * (0.5 + 1) / 2 + 2/3 * 1 = 0.25 + 2/3.
  EXPECT_NEAR(aupro({map}, {mask}, 1, 5, 1.0)->aupro, 0.25 + 2.0 / 3.0, 1e-12);
}

TEST(Aupro, RegionsAreEightConnected) {
  // A diagonal chain is one region of 3 pixels (4-connectivity would give sizes 1 and 2 and
  // PRO 1/2 at the top). Only (0,0) is high: PRO = 1/3 until every normal pixel is in.
  //   1 0 0        0.9  0.1  0.2
  //   0 1 1        0.3  0.05 0.06
  //   0 0 0        0.4  0.5  0.6
  const std::vector<uint8_t> mask{1, 0, 0, 0, 1, 1, 0, 0, 0};
  const std::vector<float> map{0.9f, 0.1f, 0.2f, 0.3f, 0.05f, 0.06f, 0.4f, 0.5f, 0.6f};
  const auto p = aupro({map}, {mask}, 3, 3);
  ASSERT_TRUE(p.has_value());
  EXPECT_NEAR(p->aupro, 1.0 / 3.0, 1e-12);
}

TEST(Aupro, DegenerateInputs) {
  // No region at all, or no normal pixel: empty.
  EXPECT_FALSE(aupro({{0.1f, 0.2f}}, {{0, 0}}, 1, 2).has_value());
  EXPECT_FALSE(aupro({{0.1f, 0.2f}}, {{1, 1}}, 1, 2).has_value());
  EXPECT_FALSE(aupro({}, {}, 4, 4).has_value());
  EXPECT_THROW(aupro({{0.1f, 0.2f}}, {{0, 1}}, 1, 3), Error);       // wrong size
  EXPECT_THROW(aupro({{0.1f, 0.2f}}, {}, 1, 2), Error);             // no mask
  EXPECT_THROW(aupro({{0.1f, 0.2f}}, {{0, 1}}, 1, 2, 0.0), Error);  // bad limit
  EXPECT_THROW(aupro({{0.1f, std::nanf("")}}, {{0, 1}}, 1, 2), Error);
  // Constant maps: the first threshold takes every pixel, PRO jumps to 1 at FPR 1.
  // Interpolated at 0.3: PRO 0.3, area 0.3 * 0.3 / 2, normalised 0.15.
  EXPECT_NEAR(aupro({{2, 2, 2, 2}}, {{0, 1, 0, 0}}, 2, 2)->aupro, 0.15, 1e-12);
}

TEST(Aupro, MatchesSlowReferenceOnRandomMaps) {
  std::mt19937 rng(4);
  const int h = 17, w = 13;
  for (int rep = 0; rep < 6; ++rep) {
    std::vector<std::vector<float>> maps;
    std::vector<std::vector<uint8_t>> masks;
    for (int i = 0; i < 4; ++i) {
      std::vector<uint8_t> mask(h * w, 0);
      std::vector<float> map(h * w);
      // A few random rectangles and scattered pixels: regions of varied size, some touching
      // only diagonally; the image i == 0 stays all normal.
      const int blobs = i == 0 ? 0 : std::uniform_int_distribution<int>(1, 3)(rng);
      for (int b = 0; b < blobs; ++b) {
        const int y0 = rng() % h, x0 = rng() % w, bh = 1 + rng() % 4, bw = 1 + rng() % 4;
        for (int y = y0; y < std::min(h, y0 + bh); ++y)
          for (int x = x0; x < std::min(w, x0 + bw); ++x) mask[y * w + x] = 1;
      }
      if (i > 0)
        for (int k = 0; k < 3; ++k) mask[rng() % (h * w)] = 1;
      std::normal_distribution<float> noise(0, 1);
      for (int p = 0; p < h * w; ++p) {
        float s = noise(rng) + (mask[p] ? 1.5f : 0.0f);
        if (rep % 2) s = std::round(s * 4) / 4;  // heavy ties
        map[p] = s;
      }
      maps.push_back(std::move(map));
      masks.push_back(std::move(mask));
    }
    for (double limit : {0.3, 0.05, 1.0}) {
      const auto p = aupro(maps, masks, h, w, limit);
      ASSERT_TRUE(p.has_value());
      EXPECT_NEAR(p->aupro, reference_aupro(maps, masks, h, w, limit), 1e-9)
          << "rep " << rep << " limit " << limit;
      EXPECT_NEAR(p->curve.x.back(), limit, 1e-12);
    }
  }
}

TEST(Aupro, ImagesOfDifferentSizesMatchSlowReference) {
  // Maps cut to each image's own rectangle (the pad resize) have a size each.
  std::mt19937 rng(11);
  std::vector<std::vector<float>> maps;
  std::vector<std::vector<uint8_t>> masks;
  std::vector<std::pair<int, int>> sizes;
  for (int i = 0; i < 5; ++i) {
    const int h = 5 + static_cast<int>(rng() % 9), w = 4 + static_cast<int>(rng() % 11);
    std::vector<uint8_t> mask(static_cast<size_t>(h * w), 0);
    std::vector<float> map(static_cast<size_t>(h * w));
    if (i > 0) {
      const int y0 = static_cast<int>(rng() % h), x0 = static_cast<int>(rng() % w);
      for (int y = y0; y < std::min(h, y0 + 3); ++y)
        for (int x = x0; x < std::min(w, x0 + 2); ++x) mask[static_cast<size_t>(y * w + x)] = 1;
    }
    std::normal_distribution<float> noise(0, 1);
    for (size_t p = 0; p < map.size(); ++p) map[p] = noise(rng) + (mask[p] ? 1.2f : 0.0f);
    maps.push_back(std::move(map));
    masks.push_back(std::move(mask));
    sizes.emplace_back(h, w);
  }
  for (double limit : {0.3, 1.0}) {
    const auto p = aupro(maps, masks, sizes, limit);
    ASSERT_TRUE(p.has_value());
    EXPECT_NEAR(p->aupro, reference_aupro(maps, masks, sizes, limit), 1e-9) << limit;
  }
  // A size that does not match its map is the caller's mistake, reported as usage.
  sizes[2].second += 1;
  EXPECT_THROW(aupro(maps, masks, sizes, 0.3), patchcore::Error);
  sizes.pop_back();
  EXPECT_THROW(aupro(maps, masks, sizes, 0.3), patchcore::Error);
}

}  // namespace
}  // namespace patchcore
