// torchvision ResNets as ONNX: layer outputs of small torchvision-built networks (fixtures made by
// scripts/make_torch_fixtures.py with torch 1.13) reproduced by OpenCV DNN at two input sizes
// with one loaded graph; the real architectures' tensor names and shapes; reporting of missing,
// extra and mis-shaped tensors; the metadata that onnx_backbone_info reads.
#include <gtest/gtest.h>
#include <onnx/onnx_pb.h>

#include <cmath>
#include <cstdio>
#include <fstream>
#include <sstream>

#include "backbone.h"
#include "error.h"
#include "npy.h"
#include "test_support.h"
#include "torchvision_import.h"

namespace patchcore {
namespace {

namespace fs = std::filesystem;
using testing::TempDir;

const fs::path kFixtures = fs::path(PATCHCORE_SOURCE_DIR) / "tests" / "fixtures" / "torch";

// The fixture networks (see make_torch_fixtures.py).
ResNetSpec tiny_basic() {
  ResNetSpec s;
  s.name = "tiny_basic";
  s.blocks = {2, 1, 2, 1};
  s.stem_width = 8;
  s.planes = {8, 16, 24, 32};
  return s;
}
ResNetSpec tiny_wide() {
  ResNetSpec s;
  s.name = "tiny_wide";
  s.bottleneck = true;
  s.blocks = {2, 1, 1, 1};
  s.stem_width = 8;
  s.planes = {4, 8, 12, 16};
  s.width_per_group = 128;
  return s;
}

double rel_l2(const Tensor& a, const Tensor& b) {
  EXPECT_EQ(a.shape, b.shape);
  if (a.shape != b.shape) return 1e9;
  double d = 0, n = 0;
  for (size_t i = 0; i < a.data.size(); ++i) {
    d +=
        (static_cast<double>(a.data[i]) - b.data[i]) * (static_cast<double>(a.data[i]) - b.data[i]);
    n += static_cast<double>(b.data[i]) * b.data[i];
  }
  return std::sqrt(d / n);
}

std::string error_of(const std::function<void()>& f) {
  try {
    f();
  } catch (const Error& e) {
    return e.what();
  }
  return "";
}

const std::vector<std::string> kAllLayers = {"layer1", "layer2", "layer3", "layer4"};

void expect_matches_torchvision(const std::string& fixture, const ResNetSpec& spec,
                                const std::string& pth) {
  const StateDict weights = load_torch_state_dict(kFixtures / pth);
  const std::vector<uint8_t> onnx = resnet_to_onnx(spec, weights, 4, "test", pth);
  for (const BackboneEngine engine : {BackboneEngine::opencv, BackboneEngine::dnnl}) {
    const auto net = make_backbone(onnx, kAllLayers, 2, engine);
    const std::string name = net->engine();
    // One loaded graph, two input sizes (one odd): the graph's spatial size is symbolic.
    for (const std::string size : {"64x80", "45x61", "64x80"}) {
      const Tensor input = read_npy(kFixtures / ("input_" + size + ".npy"));
      const std::vector<Tensor> out = net->forward(input);
      ASSERT_EQ(out.size(), 4u);
      for (size_t l = 0; l < 4; ++l) {
        const Tensor want =
            read_npy(kFixtures / (fixture + "_" + kAllLayers[l] + "_" + size + ".npy"));
        const double err = rel_l2(out[l], want);
        EXPECT_LT(err, 1e-5) << pth << " " << kAllLayers[l] << " at " << size << " by " << name;
        char text[32];
        std::snprintf(text, sizeof text, "%.3g", err);
        ::testing::Test::RecordProperty(name + "_" + pth + "_" + kAllLayers[l] + "_" + size, text);
      }
    }
  }
}

TEST(TorchvisionImport, BasicBlockNetworkMatchesTorchvision) {
  expect_matches_torchvision("tiny_basic", tiny_basic(), "tiny_basic.pth");
}

TEST(TorchvisionImport, WideBottleneckNetworkMatchesTorchvision) {
  expect_matches_torchvision("tiny_wide", tiny_wide(), "tiny_wide.pth");
}

TEST(TorchvisionImport, LegacyFormatFileMatchesTorchvision) {
  expect_matches_torchvision("tiny_wide", tiny_wide(), "tiny_wide_legacy.pth");
}

TEST(TorchvisionImport, ArchitecturesHaveTorchvisionsTensorNamesAndShapes) {
  std::ifstream in(kFixtures / "torchvision_shapes.txt");
  ASSERT_TRUE(in) << "missing fixture torchvision_shapes.txt";
  std::map<std::string, std::map<std::string, std::vector<int64_t>>> want;
  std::string arch, name, dims;
  while (in >> arch >> name >> dims) {
    std::vector<int64_t> shape;
    std::stringstream ss(dims);
    std::string d;
    while (std::getline(ss, d, ',')) shape.push_back(std::stoll(d));
    want[arch][name] = shape;
  }
  ASSERT_EQ(want.size(), torchvision_arch_names().size());
  for (const std::string& a : torchvision_arch_names()) {
    const auto spec = torchvision_arch(a);
    ASSERT_TRUE(spec) << a;
    EXPECT_EQ(resnet_tensor_shapes(*spec), want[a]) << a;
  }
  EXPECT_FALSE(torchvision_arch("vgg16"));
}

TEST(TorchvisionImport, LayersPastTheLastAreNotNeededNorEmitted) {
  StateDict weights = load_torch_state_dict(kFixtures / "tiny_basic.pth");
  for (auto it = weights.begin(); it != weights.end();) {
    it = it->first.rfind("layer4.", 0) == 0 ? weights.erase(it) : std::next(it);
  }
  const std::vector<uint8_t> onnx = resnet_to_onnx(tiny_basic(), weights, 3, "t", "w.pth");
  const auto net = make_opencv_backbone(onnx, {"layer2", "layer3"}, 1);
  const std::vector<Tensor> out = net->forward(read_npy(kFixtures / "input_64x80.npy"));
  EXPECT_LT(rel_l2(out[1], read_npy(kFixtures / "tiny_basic_layer3_64x80.npy")), 1e-5);
  EXPECT_THROW(make_opencv_backbone(onnx, {"layer4"}, 1), Error);
  // Block outputs carry torchvision's module names and can be requested.
  const auto mid = make_opencv_backbone(onnx, {"maxpool", "layer1.0", "layer3.0"}, 1);
  const std::vector<Tensor> m = mid->forward(read_npy(kFixtures / "input_64x80.npy"));
  EXPECT_EQ(m[0].shape, (std::vector<int64_t>{1, 8, 16, 20}));
  EXPECT_EQ(m[1].shape, (std::vector<int64_t>{1, 8, 16, 20}));
  EXPECT_EQ(m[2].shape, (std::vector<int64_t>{1, 24, 4, 5}));

  const std::string msg = error_of([&] { resnet_to_onnx(tiny_basic(), weights, 4, "t", "w.pth"); });
  EXPECT_NE(msg.find("w.pth"), std::string::npos) << msg;
  EXPECT_NE(msg.find("missing tensors: layer4.0."), std::string::npos) << msg;
}

TEST(TorchvisionImport, MissingExtraAndMisshapedTensorsAreNamed) {
  const StateDict good = load_torch_state_dict(kFixtures / "tiny_basic.pth");
  {
    StateDict w = good;
    w.erase("layer2.0.conv1.weight");
    w.erase("layer1.1.bn2.running_var");
    const std::string msg = error_of([&] { resnet_to_onnx(tiny_basic(), w, 3, "t", "w.pth"); });
    EXPECT_NE(msg.find("missing tensors"), std::string::npos) << msg;
    EXPECT_NE(msg.find("layer2.0.conv1.weight"), std::string::npos) << msg;
    EXPECT_NE(msg.find("layer1.1.bn2.running_var"), std::string::npos) << msg;
  }
  {
    StateDict w = good;
    w["layer3.0.bn1.weight"] = Tensor({23});
    const std::string msg = error_of([&] { resnet_to_onnx(tiny_basic(), w, 3, "t", "w.pth"); });
    EXPECT_NE(msg.find("layer3.0.bn1.weight is [23], tiny_basic needs [24]"), std::string::npos)
        << msg;
  }
  {
    StateDict w = good;
    w["layer1.0.conv3.weight"] = Tensor({8, 8, 1, 1});
    const std::string msg = error_of([&] { resnet_to_onnx(tiny_basic(), w, 3, "t", "w.pth"); });
    EXPECT_NE(msg.find("does not have: layer1.0.conv3.weight"), std::string::npos) << msg;
  }
  {  // a bottleneck file as a basic-block architecture
    const StateDict wide = load_torch_state_dict(kFixtures / "tiny_wide.pth");
    const std::string msg = error_of([&] { resnet_to_onnx(tiny_basic(), wide, 3, "t", "x.pth"); });
    EXPECT_NE(msg.find("not a torchvision tiny_basic state_dict"), std::string::npos) << msg;
    EXPECT_NE(msg.find("conv3"), std::string::npos) << msg;
  }
  {  // fc and num_batches_tracked may be absent
    StateDict w = good;
    for (auto it = w.begin(); it != w.end();) {
      const bool drop = it->first.rfind("fc.", 0) == 0 ||
                        it->first.find("num_batches_tracked") != std::string::npos;
      it = drop ? w.erase(it) : std::next(it);
    }
    EXPECT_NO_THROW(resnet_to_onnx(tiny_basic(), w, 4, "t", "w.pth"));
  }
}

TEST(TorchvisionImport, ImportWritesMetadataThatBackboneInfoReads) {
  TempDir dir;
  // A real architecture name is needed by import_torchvision; the tiny fixture is not one.
  EXPECT_NE(error_of([&] {
              import_torchvision("resnet18", kFixtures / "tiny_basic.pth", dir / "r.onnx");
            }).find("not a torchvision resnet18 state_dict"),
            std::string::npos);
  EXPECT_FALSE(fs::exists(dir / "r.onnx"));
  EXPECT_THROW(import_torchvision("vgg16", kFixtures / "tiny_basic.pth", dir / "r.onnx"), Error);
  EXPECT_THROW(import_torchvision("resnet18", dir / "missing.pth", dir / "r.onnx"), Error);

  const StateDict weights = load_torch_state_dict(kFixtures / "tiny_wide.pth");
  const std::vector<uint8_t> onnx =
      resnet_to_onnx(tiny_wide(), weights, 3, "torchvision:tiny:sha256:abc", "w.pth");
  testing::write_bytes(dir / "b.onnx", std::string(onnx.begin(), onnx.end()));
  const BackboneInfo info = onnx_backbone_info(dir / "b.onnx");
  EXPECT_EQ(info.default_layers, (std::vector<std::string>{"layer2", "layer3"}));
  EXPECT_TRUE(info.has_normalization);
  EXPECT_EQ(info.normalization, Normalization::imagenet);
  EXPECT_EQ(info.default_image_size, 224);
  EXPECT_FALSE(info.builtin);
  onnx::ModelProto proto;
  ASSERT_TRUE(proto.ParseFromArray(onnx.data(), static_cast<int>(onnx.size())));
  bool has_source = false;
  for (const auto& p : proto.metadata_props()) {
    has_source |= p.key() == "patchcore.source" && p.value() == "torchvision:tiny:sha256:abc";
  }
  EXPECT_TRUE(has_source);
  EXPECT_EQ(proto.opset_import(0).version(), 10);

  // The file works through the generic ONNX path at any size, e.g. fit's 224.
  const BackboneGraph g = build_backbone_graph((dir / "b.onnx").string(), info.default_layers, 224);
  const auto net = make_opencv_backbone(g.onnx, info.default_layers, 1);
  Tensor x({1, 3, 224, 224});
  const std::vector<Tensor> out = net->forward(x);
  EXPECT_EQ(out[0].shape, (std::vector<int64_t>{1, 32, 28, 28}));
  EXPECT_EQ(out[1].shape, (std::vector<int64_t>{1, 48, 14, 14}));
}

TEST(TorchvisionImport, OnnxWithoutMetadataAndBrokenFiles) {
  TempDir dir;
  const StateDict weights = load_torch_state_dict(kFixtures / "tiny_basic.pth");
  std::vector<uint8_t> onnx = resnet_to_onnx(tiny_basic(), weights, 2, "t", "w.pth");
  onnx::ModelProto proto;
  ASSERT_TRUE(proto.ParseFromArray(onnx.data(), static_cast<int>(onnx.size())));
  proto.clear_metadata_props();
  std::string bytes;
  ASSERT_TRUE(proto.SerializeToString(&bytes));
  testing::write_bytes(dir / "plain.onnx", bytes);
  const BackboneInfo plain = onnx_backbone_info(dir / "plain.onnx");
  EXPECT_TRUE(plain.default_layers.empty());
  EXPECT_FALSE(plain.has_normalization);
  EXPECT_EQ(plain.default_image_size, 0);
  EXPECT_EQ(plain.name, (dir / "plain.onnx").string());
  // Any named intermediate output can be asked for (what fit --layers does).
  const BackboneGraph g =
      build_backbone_graph((dir / "plain.onnx").string(), {"maxpool", "layer1.0", "layer2"}, 0);
  EXPECT_EQ(make_opencv_backbone(g.onnx, {"maxpool", "layer1.0", "layer2"}, 1)
                ->forward(Tensor({1, 3, 32, 32}))[2]
                .shape,
            (std::vector<int64_t>{1, 16, 4, 4}));

  auto with_prop = [&](const std::string& key, const std::string& value) {
    onnx::ModelProto p = proto;
    auto* e = p.add_metadata_props();
    e->set_key(key);
    e->set_value(value);
    std::string b;
    p.SerializeToString(&b);
    testing::write_bytes(dir / "bad.onnx", b);
    return error_of([&] { onnx_backbone_info(dir / "bad.onnx"); });
  };
  EXPECT_NE(with_prop("patchcore.normalization", "zscore").find("bad.onnx"), std::string::npos);
  EXPECT_NE(with_prop("patchcore.image_size", "22x").find("image_size"), std::string::npos);
  EXPECT_NE(with_prop("patchcore.image_size", "-3").find("image_size"), std::string::npos);
  EXPECT_NE(with_prop("patchcore.layers", "layer2,,layer3").find("patchcore.layers"),
            std::string::npos);
  EXPECT_TRUE(with_prop("other.key", "x").empty());

  testing::write_bytes(dir / "junk.onnx", "this is not protobuf \xff\xff\xff");
  EXPECT_NE(error_of([&] { onnx_backbone_info(dir / "junk.onnx"); }).find("junk.onnx"),
            std::string::npos);
  EXPECT_NE(error_of([&] { onnx_backbone_info(dir / "none.onnx"); }).find("none.onnx"),
            std::string::npos);
}

}  // namespace
}  // namespace patchcore
