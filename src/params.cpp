#include "params.h"

#include <filesystem>

#include "backbone.h"
#include "error.h"

namespace fs = std::filesystem;

namespace patchcore {

const char* to_string(EmbeddingMode m) { return m == EmbeddingMode::paper ? "paper" : "concat"; }

EmbeddingMode embedding_from_string(const std::string& name) {
  if (name == "paper") return EmbeddingMode::paper;
  if (name == "concat") return EmbeddingMode::concat;
  throw_usage("unknown embedding '" + name + "' (expected concat or paper)");
}

const char* to_string(Upsample u) { return u == Upsample::bilinear ? "bilinear" : "nearest"; }

Upsample upsample_from_string(const std::string& name) {
  if (name == "bilinear") return Upsample::bilinear;
  if (name == "nearest") return Upsample::nearest;
  throw_usage("unknown upsample '" + name + "' (expected bilinear or nearest)");
}

const char* to_string(BackboneEngine e) {
  switch (e) {
    case BackboneEngine::automatic:
      return "auto";
    case BackboneEngine::dnnl:
      return "dnnl";
    case BackboneEngine::opencv:
      return "opencv";
  }
  return "?";
}

const char* to_string(Precision p) {
  switch (p) {
    case Precision::automatic:
      return "auto";
    case Precision::fp32:
      return "fp32";
    case Precision::bf16:
      return "bf16";
  }
  return "?";
}

Params preset_params(const std::string& preset) {
  Params p;
  p.preset = preset;
  if (preset == "paper") {
    // The authors' reference code: resize 256, centre crop 224, squared L2 from FAISS.
    p.image_size = 256;
    p.crop = 224;
    p.embedding = EmbeddingMode::paper;
    p.squared_l2 = true;
    p.coreset_ratio = 0.1;
    p.coreset_min = 0;
    p.intensity = Intensity::keep;
  } else if (preset == "anomalib") {
    p.image_size = 256;
    p.embedding = EmbeddingMode::concat;
    p.reweight = true;
    p.upsample = Upsample::nearest;
    p.blur_reflect101 = true;
    p.coreset_ratio = 0.1;
    p.coreset_min = 0;
    p.intensity = Intensity::keep;
  } else if (!preset.empty()) {
    throw_usage("unknown preset '" + preset + "' (expected paper or anomalib)");
  }
  return p;
}

BackboneSpec resolve_backbone(const Params& params) {
  BackboneSpec spec;
  spec.backbone = params.backbone;
  spec.layers = params.layers;
  spec.normalization = params.normalization;
  if (!spec.normalization.empty())
    spec.normalization = to_string(normalization_from_string(spec.normalization));
  spec.image_size = params.image_size;
  if (const auto builtin = builtin_backbone(params.backbone)) {
    spec.builtin = true;
    if (spec.layers.empty()) spec.layers = builtin->default_layers;
    if (spec.normalization.empty()) spec.normalization = to_string(builtin->normalization);
    if (spec.image_size <= 0) spec.image_size = builtin->default_image_size;
    return spec;
  }
  if (!fs::exists(params.backbone))
    throw_bad_input(params.backbone,
                    "not a built-in backbone (inception_v3, mobilenet_v2) and no such file");
  const BackboneInfo file = onnx_backbone_info(params.backbone);
  if (spec.layers.empty()) spec.layers = file.default_layers;
  if (spec.layers.empty())
    throw_usage("layers must be given for the ONNX backbone " + params.backbone +
                ": the file names no default layers");
  if (spec.normalization.empty()) {
    if (!file.has_normalization)
      throw_usage("normalization must be given for the ONNX backbone " + params.backbone +
                  ": the file does not say (imagenet, m11 or unit)");
    spec.normalization = to_string(file.normalization);
  }
  if (spec.image_size <= 0)
    spec.image_size = file.default_image_size > 0 ? file.default_image_size : 224;
  return spec;
}

void validate(const Params& p) {
  if (p.image_size != 0 && (p.image_size < 32 || p.image_size > 4096))
    throw_usage("image_size must be between 32 and 4096 (0: the backbone's), got " +
                std::to_string(p.image_size));
  if (p.crop < 0 || (p.crop > 0 && p.image_size > 0 && p.crop > p.image_size))
    throw_usage("crop must be between 0 and image_size, got " + std::to_string(p.crop));
  if (!(p.coreset_ratio > 0)) throw_usage("coreset_ratio must be > 0 (1 keeps every patch)");
  if (p.patch_size < 1 || p.patch_size % 2 == 0) throw_usage("patch_size must be odd and >= 1");
  if (p.pretrain_dim < 1 || p.target_dim < 1)
    throw_usage("pretrain_dim and target_dim must be >= 1");
  if (p.coreset_min < 0) throw_usage("coreset_min must be >= 0");
  if (p.coreset_dim < 1) throw_usage("coreset_dim must be >= 1");
  if (p.k < 1) throw_usage("k must be >= 1");
  if (p.reweight_b < 1) throw_usage("reweight_b must be >= 1");
  if (p.blur_sigma < 0) throw_usage("blur_sigma must be >= 0");
  if (p.holdout_fraction < 0 || p.holdout_fraction >= 1)
    throw_usage("holdout_fraction must be in [0, 1)");
  if (p.batch_size < 1) throw_usage("batch_size must be >= 1");
  if (p.threads < 0) throw_usage("threads must be >= 0 (0: all cores)");
  if (p.max_memory < 0) throw_usage("max_memory must be >= 0 (0: 80 % of the available memory)");
}

}  // namespace patchcore
