#include <gtest/gtest.h>

#include <algorithm>
#include <random>

#include "coreset.h"
#include "feature_store.h"
#include "test_support.h"

namespace fs = std::filesystem;

namespace patchcore {
namespace {

Tensor random_rows(int64_t rows, int64_t cols) {
  Tensor t({rows, cols});
  std::mt19937 rng(9);
  std::normal_distribution<float> g(0.0f, 1.0f);
  for (float& v : t.data) v = g(rng);
  return t;
}

// Writes x into the store in batches of uneven sizes, as fit's batches arrive.
void fill(FeatureStore& store, const Tensor& x) {
  int64_t at = 0;
  for (int64_t size : {300, 1500, 7, 2000, 1024, 169}) {
    const int64_t rows = std::min(size, x.dim(0) - at);
    std::copy_n(x.row(at), rows * x.dim(1), store.next(rows));
    store.commit(rows);
    at += rows;
  }
  ASSERT_EQ(at, x.dim(0));
  store.finish();
}

TEST(FeatureStore, StreamedRowsAndTheirProjectionEqualTheWholeInMemory) {
  testing::TempDir tmp;
  for (int64_t dim : {200, 48}) {  // projected to 64, and kept as they are
    SCOPED_TRACE(dim);
    const Tensor x = random_rows(5000, dim);
    FeatureStore streamed(5000, dim, tmp.path(), 64, 4, 2);
    ASSERT_TRUE(streamed.streamed());
    fill(streamed, x);
    EXPECT_TRUE(fs::is_empty(tmp.path())) << "the file has no name";
    const MatrixView f = streamed.features();
    ASSERT_EQ(f.rows, 5000);
    EXPECT_TRUE(std::equal(x.data.begin(), x.data.end(), f.data));
    EXPECT_EQ(streamed.file_bytes(), 5000 * dim * 4);
    const Tensor whole = coreset_search_rows({x.ptr(), 5000, dim}, 64, 4, 2);
    const MatrixView p = streamed.projected();
    ASSERT_EQ(p.cols, whole.dim(1));
    EXPECT_TRUE(std::equal(whole.data.begin(), whole.data.end(), p.data));
    streamed.release(0, 5000);  // pages dropped, the rows still read back from the file
    EXPECT_TRUE(std::equal(x.data.begin(), x.data.end(), streamed.features().data));

    FeatureStore memory(5000, dim);
    EXPECT_FALSE(memory.streamed());
    fill(memory, x);
    EXPECT_TRUE(std::equal(x.data.begin(), x.data.end(), memory.features().data));
  }
}

TEST(FeatureStore, AFolderThatCannotHoldTheFileIsNamed) {
  testing::TempDir tmp;
  const fs::path missing = tmp.path() / "no-such-folder";
  testing::expect_bad_input_naming(missing, [&] { FeatureStore s(10, 200, missing, 64, 0, 1); });
}

}  // namespace
}  // namespace patchcore
