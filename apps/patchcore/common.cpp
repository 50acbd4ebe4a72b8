#include <unistd.h>

#include <cstdio>
#include <iostream>
#include <sstream>

#include "cli.h"

namespace patchcore::cli {

void add_fit_options(CLI::App& cmd, FitOptions& o) {
  Params& p = o.params;
  auto& g = o.given;
  g["backbone"] = cmd.add_option("--backbone", p.backbone,
                                 "inception_v3 (default), mobilenet_v2 (fast) or an ONNX file")
                      ->capture_default_str();
  g["layers"] = cmd.add_option("--layers", o.layers,
                               "feature layers, shallow to deep, comma-separated "
                               "(default: the backbone's)");
  g["normalize"] =
      cmd.add_option("--normalize", p.normalization, "input normalisation of an ONNX backbone")
          ->check(CLI::IsMember({"imagenet", "m11", "unit"}));
  g["preset"] = cmd.add_option("--preset", o.preset,
                               "paper or anomalib (options given "
                               "explicitly still win)")
                    ->check(CLI::IsMember({"paper", "anomalib"}));
  g["image-size"] = cmd.add_option("--image-size", p.image_size,
                                   "images are resized to S x S (0: the backbone's default: "
                                   "299 for inception_v3, 224 for mobilenet_v2)");
  g["resize"] = cmd.add_option("--resize", o.resize,
                               "squash (default: stretch to S x S), pad (keep the aspect "
                               "ratio: longer side to S, the rest padded) or fixed (as pad, "
                               "one scale for all: the largest training image fills S)")
                    ->check(CLI::IsMember({"squash", "pad", "fixed"}));
  g["intensity"] = cmd.add_option("--intensity", o.intensity,
                                  "auto (default: standardize when the training images' mean "
                                  "brightness varies by more than 10 %), keep, or standardize "
                                  "(each image's channels to ImageNet's mean and spread)")
                       ->check(CLI::IsMember({"auto", "keep", "standardize"}));
  g["crop"] = cmd.add_option("--crop", p.crop,
                             "centre crop after resizing the shorter side "
                             "to --image-size (0: no crop)");
  g["coreset-ratio"] = cmd.add_option("--coreset-ratio", p.coreset_ratio,
                                      "fraction of patches kept in the memory bank")
                           ->capture_default_str();
  g["coreset-min"] = cmd.add_option("--coreset-min", p.coreset_min,
                                    "... but keep at least this many patches (all when fewer)")
                         ->capture_default_str();
  g["embedding"] = cmd.add_option("--embedding", o.embedding,
                                  "concat (default: 3x3-averaged layers, aligned and "
                                  "concatenated) or paper (adaptive pooling to --pretrain-dim "
                                  "and --target-dim)")
                       ->check(CLI::IsMember({"paper", "concat"}));
  g["pretrain-dim"] = cmd.add_option("--pretrain-dim", p.pretrain_dim)->capture_default_str();
  g["target-dim"] = cmd.add_option("--target-dim", p.target_dim)->capture_default_str();
  g["patch-size"] =
      cmd.add_option("--patch-size", p.patch_size, "neighbourhood p")->capture_default_str();
  g["k"] = cmd.add_option("--k", p.k, "nearest neighbours per patch")->capture_default_str();
  g["squared"] = cmd.add_flag("--squared-l2", p.squared_l2, "patch scores as squared L2");
  g["reweight"] = cmd.add_flag("--reweight", p.reweight, "Eq. 7 re-weighting of image scores");
  g["upsample"] = cmd.add_option("--upsample", o.upsample, "bilinear (default) or nearest")
                      ->check(CLI::IsMember({"bilinear", "nearest"}));
  g["sigma"] = cmd.add_option("--blur-sigma", p.blur_sigma, "Gaussian blur of the map")
                   ->capture_default_str();
  g["holdout"] = cmd.add_option("--holdout", p.holdout_fraction,
                                "fraction of training images held out to set the threshold")
                     ->capture_default_str();
  g["seed"] = cmd.add_option("--seed", p.seed)->capture_default_str();
  g["batch-size"] = cmd.add_option("--batch-size", p.batch_size)->capture_default_str();
  g["threads"] = cmd.add_option("--threads", p.threads, "0: all cores")->capture_default_str();
  g["engine"] = add_engine_option(cmd, o.engine);
  g["precision"] = add_precision_option(cmd, o.precision);
}

CLI::Option* add_engine_option(CLI::App& cmd, std::string& engine) {
  return cmd
      .add_option("--engine", engine,
                  "what runs the backbone: auto (dnnl unless the graph has operators it "
                  "lacks), dnnl (oneDNN) or opencv (OpenCV DNN); same features to float "
                  "rounding in fp32")
      ->check(CLI::IsMember({"auto", "dnnl", "opencv"}));
}

CLI::Option* add_precision_option(CLI::App& cmd, std::string& precision) {
  return cmd
      .add_option("--precision", precision,
                  "the backbone's arithmetic: fp32 (default), bf16 (dnnl engine only; the "
                  "backbone 2-4x as fast with AMX, about 2x with AVX-512 BF16; predicting in "
                  "bf16 with a model fitted in fp32 stayed within 0.002 of fp32's AUROC and "
                  "AUPRO, fitting in bf16 changes the memory bank as another seed would) or "
                  "auto (bf16 where the CPU has AVX-512 BF16 or AMX, else fp32)")
      ->check(CLI::IsMember({"auto", "fp32", "bf16"}));
}

Params resolve_fit_options(const FitOptions& o) {
  Params p = preset_params(o.preset);
  const Params& u = o.params;
  auto given = [&](const char* name) { return o.given.at(name)->count() > 0; };
  if (given("backbone")) p.backbone = u.backbone;
  if (given("layers")) {
    std::stringstream s(o.layers);
    std::string item;
    while (std::getline(s, item, ','))
      if (!item.empty()) p.layers.push_back(item);
  }
  if (given("normalize")) p.normalization = u.normalization;
  if (given("image-size")) p.image_size = u.image_size;
  if (given("crop")) p.crop = u.crop;
  if (given("resize")) p.resize = resize_from_string(o.resize);
  if (given("intensity")) p.intensity = intensity_from_string(o.intensity);
  if (given("coreset-ratio")) p.coreset_ratio = u.coreset_ratio;
  if (given("coreset-min")) p.coreset_min = u.coreset_min;
  if (given("embedding")) p.embedding = embedding_from_string(o.embedding);
  if (given("pretrain-dim")) p.pretrain_dim = u.pretrain_dim;
  if (given("target-dim")) p.target_dim = u.target_dim;
  if (given("patch-size")) p.patch_size = u.patch_size;
  if (given("k")) p.k = u.k;
  if (given("squared")) p.squared_l2 = u.squared_l2;
  if (given("reweight")) p.reweight = u.reweight;
  if (given("upsample")) p.upsample = upsample_from_string(o.upsample);
  if (given("sigma")) p.blur_sigma = u.blur_sigma;
  if (given("holdout")) p.holdout_fraction = u.holdout_fraction;
  if (given("seed")) p.seed = u.seed;
  if (given("batch-size")) p.batch_size = u.batch_size;
  if (given("threads")) p.threads = u.threads;
  if (given("engine")) p.engine = engine_from_string(o.engine);
  if (given("precision")) p.precision = precision_from_string(o.precision);
  return p;
}

Callbacks stderr_callbacks(bool quiet) {
  Callbacks cb;
  const bool tty = ::isatty(STDERR_FILENO);
  cb.log = [quiet, tty](LogLevel level, const std::string& message) {
    if (quiet && level < LogLevel::warning) return;
    if (level == LogLevel::debug) return;
    const char* tag = level == LogLevel::warning ? "warning: "
                      : level == LogLevel::error ? "error: "
                                                 : "";
    std::cerr << (tty ? "\r\033[K" : "") << "patchcore: " << tag << message << "\n";
  };
  if (!quiet) {
    // On a terminal the line is redrawn; in a log file, one line per tenth of the work.
    auto last = std::make_shared<std::pair<std::string, int64_t>>("", -1);
    cb.progress = [tty, last](const std::string& stage, int64_t done, int64_t total) {
      if (total <= 0) return;
      const int64_t tenth = done * 10 / total;
      if (tty) {
        std::cerr << "\r\033[K" << stage << " " << done << "/" << total
                  << (done == total ? "\n" : "") << std::flush;
      } else if (stage != last->first || tenth != last->second) {
        std::cerr << stage << " " << done << "/" << total << "\n";
      }
      *last = {stage, tenth};
    };
  }
  return cb;
}

}  // namespace patchcore::cli
