// .npy writer and reader: round trips, the exact header numpy expects, a file numpy wrote,
// and clean errors on damaged files.
#include <gtest/gtest.h>

#include "error.h"
#include "npy.h"
#include "test_support.h"

namespace patchcore {
namespace {

namespace fs = std::filesystem;
using testing::TempDir;

const fs::path kFixtures = fs::path(PATCHCORE_SOURCE_DIR) / "tests" / "fixtures" / "torch";

Tensor ramp(std::vector<int64_t> shape) {
  Tensor t(std::move(shape));
  for (int64_t i = 0; i < t.numel(); ++i) t.data[i] = 0.5f * static_cast<float>(i) - 3.25f;
  return t;
}

TEST(Npy, RoundTripsShapesAndValues) {
  TempDir dir;
  for (const auto& shape :
       std::vector<std::vector<int64_t>>{{}, {5}, {2, 3}, {1, 4, 3, 2}, {0, 3}, {1, 1, 1, 1, 1}}) {
    const Tensor t = ramp(shape);
    write_npy(dir / "a.npy", t);
    const Tensor r = read_npy(dir / "a.npy");
    EXPECT_EQ(r.shape, t.shape);
    EXPECT_EQ(r.data, t.data);
  }
}

TEST(Npy, HeaderIsVersion1PaddedTo64WithPythonTupleSyntax) {
  TempDir dir;
  write_npy(dir / "a.npy", ramp({7}));
  std::string b = testing::read_bytes(dir / "a.npy");
  ASSERT_GE(b.size(), 10u);
  EXPECT_EQ(b.substr(0, 8), std::string("\x93NUMPY\x01\x00", 8));
  const size_t header_len = static_cast<uint8_t>(b[8]) | static_cast<uint8_t>(b[9]) << 8;
  EXPECT_EQ((10 + header_len) % 64, 0u);
  const std::string header = b.substr(10, header_len);
  EXPECT_EQ(header.back(), '\n');
  EXPECT_NE(header.find("'descr': '<f4'"), std::string::npos);
  EXPECT_NE(header.find("'fortran_order': False"), std::string::npos);
  EXPECT_NE(header.find("'shape': (7,)"), std::string::npos);
  EXPECT_EQ(b.size(), 10 + header_len + 7 * sizeof(float));

  write_npy(dir / "b.npy", ramp({2, 3}));
  EXPECT_NE(testing::read_bytes(dir / "b.npy").find("'shape': (2, 3)"), std::string::npos);
  write_npy(dir / "c.npy", ramp({}));
  EXPECT_NE(testing::read_bytes(dir / "c.npy").find("'shape': ()"), std::string::npos);
}

TEST(Npy, ReadsAFileNumpyWrote) {
  const Tensor t = read_npy(kFixtures / "input_45x61.npy");
  EXPECT_EQ(t.shape, (std::vector<int64_t>{1, 3, 45, 61}));
  double sum2 = 0;
  for (float v : t.data) sum2 += static_cast<double>(v) * v;
  // torch.randn values: mean square near 1.
  EXPECT_NEAR(sum2 / static_cast<double>(t.numel()), 1.0, 0.1);
}

TEST(Npy, DamagedFilesFailWithTheirName) {
  TempDir dir;
  write_npy(dir / "a.npy", ramp({4, 4}));
  const std::string good = testing::read_bytes(dir / "a.npy");
  auto expect_bad = [&](const std::string& bytes, const std::string& what) {
    testing::write_bytes(dir / "bad.npy", bytes);
    try {
      read_npy(dir / "bad.npy");
      ADD_FAILURE() << "accepted: " << what;
    } catch (const Error& e) {
      EXPECT_EQ(e.kind(), ErrorKind::bad_input) << what;
      EXPECT_NE(std::string(e.what()).find("bad.npy"), std::string::npos) << e.what();
    }
  };
  expect_bad(good.substr(0, good.size() - 1), "truncated data");
  expect_bad(good.substr(0, 30), "truncated header");
  expect_bad("hello", "not npy");
  std::string fortran = good;
  fortran.replace(fortran.find("False"), 5, "True ");
  expect_bad(fortran, "fortran order");
  std::string int_dtype = good;
  int_dtype.replace(int_dtype.find("<f4"), 3, "<i4");
  expect_bad(int_dtype, "int dtype");
  EXPECT_THROW(read_npy(dir / "missing.npy"), Error);
}

}  // namespace
}  // namespace patchcore
