// End-to-end: model files that are damaged, crafted or cut short by kill -9, and inputs that
// are empty, missing or of the wrong kind (docs/reliability.md).
#include <gtest/gtest.h>
#include <sys/wait.h>

#include <cstring>
#include <functional>
#include <nlohmann/json.hpp>

#include "kill_test.h"
#include "model_file.h"
#include "synthetic.h"
#include "test_support.h"

namespace fs = std::filesystem;
using nlohmann::json;
using patchcore::ModelFileContents;
using patchcore::testing::read_bytes;
using patchcore::testing::CmdResult;
using patchcore::testing::run_cli;
using patchcore::testing::TempDir;
using patchcore::testing::write_bytes;

namespace {

// A small data set and a small model (MobileNetV2 at 64 px) for the whole suite.
class Reliability : public ::testing::Test {
 protected:
  static void SetUpTestSuite() {
    if (patchcore::testing::built_backbones_dir().empty()) return;
    tmp_ = new TempDir();
    patchcore::SyntheticParams p;
    p.size = 64;
    p.n_train = 8;
    p.n_test_good = 2;
    p.n_per_defect = 1;
    patchcore::write_synthetic_dataset(data(), p);
    fit_ = new CmdResult(run_cli(*tmp_, fit_args(model())));
  }
  static void TearDownTestSuite() {
    delete fit_;
    delete tmp_;
    fit_ = nullptr;
    tmp_ = nullptr;
  }
  void SetUp() override {
    if (!tmp_) GTEST_SKIP() << "build/backbones missing: run scripts/setup";
    ASSERT_EQ(fit_->code, 0) << fit_->err;
  }
  static std::vector<std::string> fit_args(const fs::path& out) {
    return {"fit",        "--data",        data().string(), "--out",
            out.string(), "--backbone",    "mobilenet_v2",  "--image-size",
            "64",         "--coreset-min", "200",           "--threads",
            "1"};
  }
  static fs::path data() { return tmp_->path() / "data"; }
  static fs::path model() { return tmp_->path() / "model.patchcore"; }
  static fs::path image() { return data() / "test" / "good" / "000.png"; }

  // The model with one metadata entry changed and valid checksums: a crafted file.
  fs::path crafted(const std::string& name,
                   const std::function<void(ModelFileContents&)>& change) const {
    ModelFileContents c = patchcore::read_model_file(model());
    change(c);
    const fs::path f = local_ / (name + ".patchcore");
    patchcore::write_model_file(f, c);
    return f;
  }
  static void set_field(ModelFileContents& c, const std::string& entry, const std::string& field,
                        const json& value) {
    json j = json::parse(c.metadata.at(entry));
    if (field.empty()) {
      j = value;
    } else {
      j[field] = value;
    }
    c.metadata[entry] = j.dump();
  }

  static TempDir* tmp_;
  static CmdResult* fit_;
  TempDir local_;
};
TempDir* Reliability::tmp_ = nullptr;
CmdResult* Reliability::fit_ = nullptr;

TEST_F(Reliability, VerifyAcceptsASoundModel) {
  CmdResult r = run_cli(local_, {"info", "--verify", model().string()});
  ASSERT_EQ(r.code, 0) << r.err;
  EXPECT_NE(r.out.find("every byte matches its checksum"), std::string::npos) << r.out;
  EXPECT_NE(r.out.find(model().string()), std::string::npos) << r.out;
  CmdResult info = run_cli(local_, {"info", model().string()});
  ASSERT_EQ(info.code, 0) << info.err;
  EXPECT_EQ(json::parse(info.out)["format_version"], patchcore::kModelFormatVersion);
}

TEST_F(Reliability, VerifyNamesTheDamagedPart) {
  const std::string bytes = read_bytes(model());
  uint64_t n = 0;
  std::memcpy(&n, bytes.data(), 8);
  const json h = json::parse(bytes.substr(8, n));
  auto middle_of = [&](const std::string& tensor) {
    const auto off = h[tensor]["data_offsets"];
    return 8 + n + (off[0].get<size_t>() + off[1].get<size_t>()) / 2;
  };
  const std::string header = bytes.substr(8, n);
  const size_t grid = 8 + header.find("\"grid\":\"[") + 9;
  struct Case {
    std::string name;
    size_t pos;
    std::string expect;
  };
  const std::vector<Case> cases{
      {"bank", middle_of("memory_bank"), "tensor 'memory_bank'"},
      {"graph", middle_of("backbone_onnx"), "tensor 'backbone_onnx'"},
      {"grid", grid, "metadata entry 'grid'"},
      {"length", 7, "header"},
      {"table", bytes.size() - 3, "checksum table"},
  };
  for (const Case& c : cases) {
    std::string b = bytes;
    b[c.pos] = c.name == "grid" ? (b[c.pos] == '9' ? '8' : '9') : static_cast<char>(b[c.pos] ^ 4);
    const fs::path f = local_ / (c.name + ".patchcore");
    write_bytes(f, b);
    CmdResult r = run_cli(local_, {"info", "--verify", f.string()});
    EXPECT_EQ(r.code, 3) << c.name << ": " << r.err;
    EXPECT_NE(r.err.find(f.string()), std::string::npos) << c.name << ": " << r.err;
    EXPECT_NE(r.err.find(c.expect), std::string::npos) << c.name << ": " << r.err;
    EXPECT_EQ(run_cli(local_, {"predict", "--model", f.string(), image().string()}).code, 3);
  }
}

TEST_F(Reliability, CraftedGridIsRefusedBeforePredictIndexesWithIt) {
  // The reported crash: a header whose grid reads [95,35] for [35,35] (here 8 x 8) loaded, and
  // predict read past the image's patches. With valid checksums only the value check stops it.
  for (const json& grid : {json{95, 8}, json{8, 7}, json{7, 8}, json{1, 1}}) {
    const fs::path f =
        crafted("grid", [&](ModelFileContents& c) { set_field(c, "grid", "", grid); });
    CmdResult r = run_cli(local_, {"predict", "--model", f.string(), image().string()});
    EXPECT_EQ(r.code, 3) << grid << ": " << r.err;
    EXPECT_NE(r.err.find("grid"), std::string::npos) << r.err;
    EXPECT_NE(r.err.find(f.string()), std::string::npos) << r.err;
    EXPECT_EQ(run_cli(local_, {"info", "--verify", f.string()}).code, 3) << grid;
  }
}

TEST_F(Reliability, CraftedValuesAreRefusedNamingTheField) {
  struct Case {
    std::string entry, field;
    json value;
    std::string expect;  // in the message
  };
  const std::vector<Case> cases{
      {"grid", "", json{0, 8}, "grid"},
      {"grid", "", json{100000, 8}, "grid"},
      {"grid", "", json{8}, "grid"},
      {"grid", "", "eight", "grid"},
      {"params", "k", 0, "params.k"},
      {"params", "k", 100000, "params.k"},
      {"params", "k", "1", "params.k"},
      {"params", "reweight_b", -1, "params.reweight_b"},
      {"params", "batch_size", 0, "params.batch_size"},
      {"params", "batch_size", 1000000000, "params.batch_size"},
      {"params", "blur_sigma", 1e9, "params.blur_sigma"},
      {"params", "blur_sigma", -1, "params.blur_sigma"},
      {"params", "patch_size", 4, "params.patch_size"},
      {"params", "patch_size", 1001, "params.patch_size"},
      {"params", "image_size", 65, "params.image_size"},
      {"params", "crop", 1000, "params.crop"},
      {"params", "embedding", "bogus", "params.embedding"},
      {"params", "intensity", "auto", "params.intensity"},
      {"params", "layers", json::array(), "params.layers"},
      {"params", "target_dim", 1 << 30, "params.target_dim"},
      {"params", "seed", -1, "params.seed"},
      {"backbone", "image_size", 128, "image_size"},
      {"backbone", "input_size", 65, "backbone.input_size"},
      {"backbone", "normalization", "m12", "backbone.normalization"},
      {"backbone", "onnx_sha256", "00", "sha256"},
      {"calibration", "image_threshold", "high", "calibration.image_threshold"},
      {"calibration", "max_score", 1e308 * 10, "calibration.max_score"},
      {"calibration", "source", 5, "calibration.source"},
  };
  for (const Case& c : cases) {
    const fs::path f = crafted(c.entry + "_" + c.field, [&](ModelFileContents& m) {
      set_field(m, c.entry, c.field, c.value);
    });
    CmdResult r = run_cli(local_, {"predict", "--model", f.string(), image().string()});
    EXPECT_EQ(r.code, 3) << c.entry << "." << c.field << " = " << c.value << ": " << r.err;
    EXPECT_NE(r.err.find(c.expect), std::string::npos)
        << c.entry << "." << c.field << ": " << r.err;
    EXPECT_NE(r.err.find(f.string()), std::string::npos) << r.err;
  }
  // A missing entry and a bank with a NaN in it.
  const fs::path no_grid =
      crafted("no_grid", [](ModelFileContents& m) { m.metadata.erase("grid"); });
  CmdResult r = run_cli(local_, {"info", no_grid.string()});
  EXPECT_EQ(r.code, 3);
  EXPECT_NE(r.err.find("'grid'"), std::string::npos) << r.err;
  const fs::path nan = crafted("nan", [](ModelFileContents& m) {
    m.f32.at("memory_bank").data[5] = std::numeric_limits<float>::quiet_NaN();
  });
  r = run_cli(local_, {"info", nan.string()});
  EXPECT_EQ(r.code, 3);
  EXPECT_NE(r.err.find("memory_bank"), std::string::npos) << r.err;
  const fs::path wide = crafted("wide", [](ModelFileContents& m) {
    patchcore::Tensor& bank = m.f32.at("memory_bank");
    bank = patchcore::Tensor({bank.dim(0), bank.dim(1) + 1});
  });
  r = run_cli(local_, {"predict", "--model", wide.string(), image().string()});
  EXPECT_EQ(r.code, 3);
  EXPECT_NE(r.err.find("dimensional"), std::string::npos) << r.err;
}

TEST_F(Reliability, Kill9DuringFitLeavesTheOldOrACompleteModel) {
  const fs::path out = local_ / "killed.patchcore";
  const int killed = patchcore::testing::expect_kill9_leaves_old_or_complete(
      fit_args(out), out, {0.1, 0.3, 0.5, 0.7, 0.8, 0.9, 0.95, 0.98, 1.0});
  EXPECT_GE(killed, 5) << "most runs must be killed before they end";
}

TEST_F(Reliability, Kill9DuringUpdateInPlaceLeavesTheOldOrACompleteModel) {
  const fs::path out = local_ / "updated.patchcore";
  fs::copy_file(model(), out);
  // Without --out, update replaces its own model: the case where a kill could lose it.
  const int killed = patchcore::testing::expect_kill9_leaves_old_or_complete(
      {"update", "--model", out.string(), "--data", data().string(), "--threads", "1"}, out,
      {0.1, 0.3, 0.5, 0.7, 0.9, 0.95, 0.98, 1.0});
  EXPECT_GE(killed, 4) << "most runs must be killed before they end";
}

TEST_F(Reliability, Kill9DuringMergeLeavesTheOldOrACompleteModel) {
  std::vector<std::string> merge{"merge"};
  for (int i = 0; i < 2; ++i) {
    const fs::path part = local_ / ("part" + std::to_string(i) + ".patchcore");
    std::vector<std::string> args = fit_args(part);
    args.insert(args.end(), {"--shard", std::to_string(i) + "/2"});
    const CmdResult r = run_cli(local_, args);
    ASSERT_EQ(r.code, 0) << r.err;
    merge.push_back(part.string());
  }
  const fs::path out = local_ / "merged.patchcore";
  merge.insert(merge.end(), {"--out", out.string(), "--threads", "1"});
  const int killed = patchcore::testing::expect_kill9_leaves_old_or_complete(
      merge, out, {0.1, 0.3, 0.5, 0.7, 0.9, 0.95, 0.98, 1.0});
  EXPECT_GE(killed, 4) << "most runs must be killed before they end";
}

TEST_F(Reliability, FolderWithoutImagesIsAnErrorNamingIt) {
  const fs::path empty = local_ / "empty";
  fs::create_directories(empty / "sub");
  write_bytes(empty / "notes.txt", "not an image");
  const fs::path m = local_ / "m.patchcore";
  for (const std::vector<std::string>& args :
       {std::vector<std::string>{"predict", "--model", model().string(), empty.string()},
        {"fit", "--data", empty.string(), "--out", m.string()},
        {"eval", "--model", model().string(), "--data", empty.string(), "--out",
         (local_ / "e").string()},
        {"bench", "--data", empty.string(), "--backbone", "mobilenet_v2"}}) {
    CmdResult r = run_cli(local_, args);
    EXPECT_EQ(r.code, 3) << args[0] << ": " << r.err;
    EXPECT_NE(r.err.find(empty.string()), std::string::npos) << args[0] << ": " << r.err;
    EXPECT_NE(r.err.find("no images"), std::string::npos) << args[0] << ": " << r.err;
    EXPECT_TRUE(r.out.empty()) << args[0] << ": " << r.out;
  }
  EXPECT_FALSE(fs::exists(m));
}

TEST_F(Reliability, MissingOrWrongKindOfInputIsAnErrorNamingIt) {
  const fs::path missing = local_ / "nowhere";
  CmdResult r = run_cli(local_, {"predict", "--model", model().string(), missing.string()});
  EXPECT_EQ(r.code, 3);
  EXPECT_NE(r.err.find(missing.string()), std::string::npos) << r.err;
  EXPECT_TRUE(r.out.empty()) << r.out;

  // A folder or an image given as the model, a model given as the data.
  r = run_cli(local_, {"predict", "--model", data().string(), image().string()});
  EXPECT_EQ(r.code, 3);
  EXPECT_NE(r.err.find("folder"), std::string::npos) << r.err;
  r = run_cli(local_, {"info", "--verify", image().string()});
  EXPECT_EQ(r.code, 3);
  EXPECT_NE(r.err.find(image().string()), std::string::npos) << r.err;
  r = run_cli(local_, {"fit", "--data", model().string(), "--out", (local_ / "m").string()});
  EXPECT_EQ(r.code, 3);
  EXPECT_NE(r.err.find(model().string()), std::string::npos) << r.err;
  r = run_cli(local_, {"info", "--verify", missing.string()});
  EXPECT_EQ(r.code, 3);
  EXPECT_NE(r.err.find("no such file"), std::string::npos) << r.err;
}

}  // namespace
