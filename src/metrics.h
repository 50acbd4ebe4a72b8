// Evaluation metrics (design.md §7): they must match sklearn / the MVTec AD evaluation code.
//
// Every function sorts once (an O(n) radix sort per class) and sweeps the distinct scores: the
// 18 M pixels of 200 maps of 299 x 299 take one to a few seconds per metric. Labels: 0 normal,
// anything else anomalous (so 0/255 masks work too). Throws Error(usage) when scores and labels
// differ in size or a score is NaN (infinities are ordinary scores).
#pragma once

#include <cstdint>
#include <optional>
#include <vector>

namespace patchcore {

/// Area under the ROC curve; ties count half (Mann-Whitney U). labels: 0 normal, 1 anomalous.
/// Empty optional when one class is missing.
std::optional<double> auroc(const std::vector<float>& scores, const std::vector<uint8_t>& labels);

struct Curve {
  std::vector<double> x, y;  ///< ROC: FPR, TPR; PRO: FPR, PRO; PR: recall, precision
  std::vector<double> thresholds;
};
/// ROC curve with one point per distinct score (sklearn's roc_curve, drop_intermediate=false),
/// starting at (0, 0) whose threshold is +infinity (sklearn >= 1.3; older versions wrote
/// max + 1). Thresholds decrease; a point counts the scores >= its threshold as positive.
/// Empty curve when one class is missing (sklearn would return NaN rates).
Curve roc_curve(const std::vector<float>& scores, const std::vector<uint8_t>& labels);

struct F1 {
  double f1 = 0, precision = 0, recall = 0;
  double threshold = 0;  ///< predict anomalous when score >= threshold
};
/// The F1-optimal threshold over every distinct score (precision-recall curve). The threshold
/// is one of the scores; among equally good thresholds the lowest wins (argmax over sklearn's
/// increasing thresholds). Empty when there is no anomalous label.
std::optional<F1> best_f1(const std::vector<float>& scores, const std::vector<uint8_t>& labels);

/// Per-region overlap curve and its normalised area up to fpr_limit, over images of equal size
/// (maps and masks [n][h * w], masks 0/1). Regions: 8-connected components of each mask. At each
/// threshold: FPR over all normal pixels, PRO = mean over regions of the fraction of the region
/// at or above the threshold. Area integrated (trapezoids) over FPR in [0, limit], linearly
/// interpolated at the limit, divided by the limit. Empty when there is no region or no normal
/// pixel.
///
/// Exact: every distinct pixel score is a threshold (as the MVTec AD evaluation code does), not
/// a fixed grid. The curve starts at (0, 0) with threshold +infinity and ends at FPR = limit;
/// that last point is interpolated between two thresholds and carries the lower one.
/// Throws Error(usage) on mismatched sizes, a NaN score or fpr_limit outside (0, 1].
struct Pro {
  double aupro = 0;
  Curve curve;  ///< x = FPR, y = PRO (up to the limit)
};
std::optional<Pro> aupro(const std::vector<std::vector<float>>& maps,
                         const std::vector<std::vector<uint8_t>>& masks, int height, int width,
                         double fpr_limit = 0.3);
/// The same with a size per image (height, width), e.g. maps cut to each image's own rectangle.
std::optional<Pro> aupro(const std::vector<std::vector<float>>& maps,
                         const std::vector<std::vector<uint8_t>>& masks,
                         const std::vector<std::pair<int, int>>& sizes, double fpr_limit = 0.3);

}  // namespace patchcore
