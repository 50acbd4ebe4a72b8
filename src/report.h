// Evaluation on labelled test images: metrics, predictions, pictures and an HTML report.
#pragma once

#include <filesystem>
#include <string>
#include <vector>

#include <nlohmann/json.hpp>

#include "dataset.h"
#include "patchcore/patchcore.h"

namespace patchcore {

struct EvalOptions {
  std::filesystem::path out_dir;  ///< gets metrics.json, predictions.csv, images/, report.html
  bool write_images = true;       ///< overlays and predicted masks under images/<kind>/
};

struct EvalResult {
  nlohmann::json metrics;   ///< what metrics.json holds
  Calibration f1_calibration;  ///< the F1-optimal thresholds (eval --save-threshold stores them)
  bool has_f1 = false;
};

/// Predicts every test sample, computes image AUROC (overall and per kind against "good"),
/// pixel AUROC and AUPRO at the model's map size (masks given the same geometry), the
/// F1-optimal threshold, and the decisions at the model's own threshold; writes the outputs.
/// An unreadable image is reported through callbacks.log and left out. Throws Error(bad_input)
/// when no test image is labelled or the output folder cannot be written.
EvalResult evaluate(const Model& model, const std::vector<Sample>& test, const EvalOptions& o,
                    const Callbacks& callbacks = {});

/// Writes text to a file atomically (temporary name, then rename). Throws Error(bad_input).
void write_text_file(const std::filesystem::path& file, const std::string& text);

/// A relative path from dir to file, with '/' separators (for links in the report).
std::string relative_link(const std::filesystem::path& file, const std::filesystem::path& dir);

}  // namespace patchcore
