// Parameters: presets, the enums' names, the backbone resolver and the checks.
#include <gtest/gtest.h>
#include <onnx/onnx_pb.h>

#include <fstream>

#include "params.h"
#include "patchcore/patchcore.h"
#include "test_support.h"

namespace fs = std::filesystem;
using patchcore::Error;
using patchcore::ErrorKind;
using patchcore::Params;

namespace {

// The message of a usage error thrown by action (empty, with a failure, when none is).
template <class Action>
std::string usage_error(Action&& action) {
  try {
    action();
  } catch (const Error& e) {
    EXPECT_EQ(e.kind(), ErrorKind::usage) << e.what();
    return e.what();
  }
  ADD_FAILURE() << "no error";
  return "";
}

TEST(Params, EnumNamesRoundTripAndUnknownNamesAreUsageErrors) {
  using namespace patchcore;
  for (auto m : {EmbeddingMode::paper, EmbeddingMode::concat})
    EXPECT_EQ(embedding_from_string(to_string(m)), m);
  for (auto u : {Upsample::bilinear, Upsample::nearest})
    EXPECT_EQ(upsample_from_string(to_string(u)), u);
  for (auto i : {Intensity::keep, Intensity::standardize, Intensity::automatic})
    EXPECT_EQ(intensity_from_string(to_string(i)), i);
  for (auto r : {Resize::squash, Resize::pad, Resize::fixed})
    EXPECT_EQ(resize_from_string(to_string(r)), r);
  for (auto e : {BackboneEngine::automatic, BackboneEngine::dnnl, BackboneEngine::opencv})
    EXPECT_EQ(engine_from_string(to_string(e)), e);
  for (auto p : {Precision::automatic, Precision::fp32, Precision::bf16})
    EXPECT_EQ(precision_from_string(to_string(p)), p);
  EXPECT_STREQ(to_string(Intensity::automatic), "auto");
  EXPECT_STREQ(to_string(BackboneEngine::automatic), "auto");
  // Each message names the parameter and the bad value.
  EXPECT_NE(usage_error([] { embedding_from_string("pooled"); }).find("embedding 'pooled'"),
            std::string::npos);
  EXPECT_NE(usage_error([] { upsample_from_string("cubic"); }).find("upsample 'cubic'"),
            std::string::npos);
  EXPECT_NE(usage_error([] { engine_from_string("cuda"); }).find("engine 'cuda'"),
            std::string::npos);
  EXPECT_NE(usage_error([] { resize_from_string("Pad"); }).find("resize"), std::string::npos);
  EXPECT_NE(usage_error([] { intensity_from_string(""); }).find("intensity"), std::string::npos);
}

TEST(Params, PresetsSetThePapersAndAnomalibsValues) {
  const Params none = patchcore::preset_params("");
  const Params defaults;
  EXPECT_EQ(none.preset, "");
  EXPECT_EQ(none.image_size, defaults.image_size);
  EXPECT_EQ(none.coreset_ratio, defaults.coreset_ratio);
  EXPECT_EQ(none.embedding, defaults.embedding);

  const Params paper = patchcore::preset_params("paper");
  EXPECT_EQ(paper.preset, "paper");
  EXPECT_EQ(paper.image_size, 256);
  EXPECT_EQ(paper.crop, 224);
  EXPECT_EQ(paper.embedding, patchcore::EmbeddingMode::paper);
  EXPECT_TRUE(paper.squared_l2);
  EXPECT_EQ(paper.coreset_ratio, 0.1);
  EXPECT_EQ(paper.coreset_min, 0);
  EXPECT_EQ(paper.intensity, patchcore::Intensity::keep);

  const Params anomalib = patchcore::preset_params("anomalib");
  EXPECT_EQ(anomalib.image_size, 256);
  EXPECT_EQ(anomalib.crop, 0);
  EXPECT_EQ(anomalib.embedding, patchcore::EmbeddingMode::concat);
  EXPECT_TRUE(anomalib.reweight);
  EXPECT_FALSE(anomalib.squared_l2);
  EXPECT_EQ(anomalib.upsample, patchcore::Upsample::nearest);
  EXPECT_TRUE(anomalib.blur_reflect101);
  EXPECT_EQ(anomalib.coreset_ratio, 0.1);

  EXPECT_NE(usage_error([] { patchcore::preset_params("faiss"); }).find("preset 'faiss'"),
            std::string::npos);
}

TEST(Params, BuiltInBackbonesTakeTheirOwnDefaultsUnlessGiven) {
  Params p;
  patchcore::BackboneSpec s = patchcore::resolve_backbone(p);
  EXPECT_TRUE(s.builtin);
  EXPECT_EQ(s.backbone, "inception_v3");
  EXPECT_EQ(s.layers, (std::vector<std::string>{"mixed2", "mixed5"}));
  EXPECT_EQ(s.normalization, "m11");
  EXPECT_EQ(s.image_size, 299);

  p.backbone = "mobilenet_v2";
  EXPECT_EQ(patchcore::resolve_backbone(p).image_size, 224);
  p.layers = {"block_3_expand_relu"};
  p.normalization = "imagenet";
  p.image_size = 128;
  s = patchcore::resolve_backbone(p);
  EXPECT_EQ(s.layers, p.layers);
  EXPECT_EQ(s.normalization, "imagenet");
  EXPECT_EQ(s.image_size, 128);

  p.normalization = "zscore";
  EXPECT_NE(usage_error([&] { patchcore::resolve_backbone(p); }).find("zscore"), std::string::npos);
}

// An ONNX file whose metadata may carry defaults, as `patchcore import` writes them.
fs::path write_onnx(const fs::path& file, const std::map<std::string, std::string>& metadata) {
  onnx::ModelProto model;
  model.set_ir_version(5);
  model.mutable_graph()->set_name("empty");
  for (const auto& [k, v] : metadata) {
    auto* prop = model.add_metadata_props();
    prop->set_key(k);
    prop->set_value(v);
  }
  std::ofstream(file, std::ios::binary) << model.SerializeAsString();
  return file;
}

TEST(Params, AnOnnxFilesDefaultsComeFromItsMetadata) {
  patchcore::testing::TempDir tmp;
  Params p;
  p.backbone = write_onnx(tmp / "resnet.onnx", {{"patchcore.layers", "layer2,layer3"},
                                                {"patchcore.normalization", "imagenet"},
                                                {"patchcore.image_size", "240"}})
                   .string();
  patchcore::BackboneSpec s = patchcore::resolve_backbone(p);
  EXPECT_FALSE(s.builtin);
  EXPECT_EQ(s.layers, (std::vector<std::string>{"layer2", "layer3"}));
  EXPECT_EQ(s.normalization, "imagenet");
  EXPECT_EQ(s.image_size, 240);

  // A bare file: layers and normalisation must be given; the size falls back to 224.
  p.backbone = write_onnx(tmp / "bare.onnx", {}).string();
  EXPECT_NE(usage_error([&] { patchcore::resolve_backbone(p); }).find("layers must be given"),
            std::string::npos);
  p.layers = {"out"};
  EXPECT_NE(
      usage_error([&] { patchcore::resolve_backbone(p); }).find("normalization must be given"),
      std::string::npos);
  p.normalization = "unit";
  s = patchcore::resolve_backbone(p);
  EXPECT_EQ(s.normalization, "unit");
  EXPECT_EQ(s.image_size, 224);

  p.backbone = (tmp / "missing.onnx").string();
  patchcore::testing::expect_bad_input_naming(p.backbone, [&] { patchcore::resolve_backbone(p); });
}

// The checks name the parameter as Params does, never a command-line flag.
TEST(Params, ChecksNameTheParameter) {
  auto check = [](const char* name, auto&& change) {
    Params p;
    change(p);
    const std::string msg = usage_error([&] { patchcore::validate(p); });
    EXPECT_NE(msg.find(name), std::string::npos) << msg;
    EXPECT_EQ(msg.find("--"), std::string::npos) << msg;
  };
  check("image_size", [](Params& p) { p.image_size = 20; });
  check("crop", [](Params& p) {
    p.image_size = 64;
    p.crop = 65;
  });
  check("coreset_ratio", [](Params& p) { p.coreset_ratio = 0; });
  check("coreset_min", [](Params& p) { p.coreset_min = -1; });
  check("patch_size", [](Params& p) { p.patch_size = 2; });
  check("holdout_fraction", [](Params& p) { p.holdout_fraction = 1; });
  check("batch_size", [](Params& p) { p.batch_size = 0; });
  check("threads", [](Params& p) { p.threads = -2; });
  EXPECT_NO_THROW(patchcore::validate(Params{}));
}

}  // namespace
