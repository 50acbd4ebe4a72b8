#include "feature_store.h"

#include <fcntl.h>
#include <sys/mman.h>
#include <unistd.h>

#include <algorithm>
#include <cerrno>
#include <cstring>
#include <string>

#include "coreset.h"
#include "error.h"

namespace patchcore {
namespace {

// The projection's chunk (see coreset_project): chunks projected separately must start where
// the whole projection's start.
constexpr int64_t kChunk = 1024;

int nameless_file(const std::filesystem::path& folder) {
  const std::string dir = folder.empty() ? std::string(".") : folder.string();
  int fd = ::open(dir.c_str(), O_TMPFILE | O_RDWR | O_CLOEXEC, 0600);
  if (fd >= 0) return fd;
  // Filesystems without O_TMPFILE: a named file, unlinked before anything is written.
  std::string name = dir + "/.patchcore-features-XXXXXX";
  fd = ::mkstemp(name.data());
  if (fd < 0)
    throw_bad_input(dir, std::string("cannot create the features file: ") + std::strerror(errno));
  ::unlink(name.c_str());
  return fd;
}

}  // namespace

FeatureStore::FeatureStore(int64_t capacity, int64_t dim)
    : capacity_(capacity),
      dim_(dim),
      memory_(std::make_unique_for_overwrite<float[]>(static_cast<size_t>(capacity * dim))) {}

FeatureStore::FeatureStore(int64_t capacity, int64_t dim, const std::filesystem::path& folder,
                           int proj_dim, uint64_t seed, int threads)
    : capacity_(capacity), dim_(dim), folder_(folder), proj_dim_(proj_dim), threads_(threads) {
  PATCHCORE_ASSERT(proj_dim >= 1);
  if (dim > proj_dim) matrix_ = coreset_projection_matrix(dim, proj_dim, seed);
  projected_ = Tensor({capacity, std::min<int64_t>(dim, proj_dim)});
  fd_ = nameless_file(folder);
}

FeatureStore::~FeatureStore() {
  if (map_) ::munmap(map_, map_bytes_);
  if (fd_ >= 0) ::close(fd_);
}

float* FeatureStore::next(int64_t rows) {
  PATCHCORE_ASSERT(rows >= 0 && rows_ + rows <= capacity_);
  if (!streamed()) return memory_.get() + rows_ * dim_;
  // The rows of the last, incomplete chunk stay in front of the batch, so that chunks are
  // projected whole.
  const int64_t carried = rows_ - projected_rows_;
  batch_.resize(static_cast<size_t>((carried + rows) * dim_));
  return batch_.data() + carried * dim_;
}

void FeatureStore::commit(int64_t rows) {
  if (!streamed()) {
    rows_ += rows;
    return;
  }
  const int64_t carried = rows_ - projected_rows_;
  transfer(true, batch_.data() + carried * dim_, rows, rows_);
  rows_ += rows;
  project_complete(rows_ / kChunk * kChunk);
}

// Projects rows [projected_rows_, upto) from the batch buffer (which starts at
// projected_rows_), then moves the rest to its front.
void FeatureStore::project_complete(int64_t upto) {
  if (upto <= projected_rows_) return;
  const int64_t count = upto - projected_rows_;
  const MatrixView rows{batch_.data(), count, dim_};
  float* out = projected_.row(projected_rows_);
  if (matrix_.empty()) {
    std::copy_n(rows.data, count * dim_, out);
  } else {
    const Tensor p = coreset_project(rows, matrix_, proj_dim_, threads_);
    std::copy_n(p.ptr(), p.numel(), out);
  }
  const int64_t rest = rows_ - upto;
  std::copy_n(batch_.data() + count * dim_, rest * dim_, batch_.data());
  batch_.resize(static_cast<size_t>(rest * dim_));
  projected_rows_ = upto;
}

void FeatureStore::finish() {
  if (!streamed() || map_) return;
  project_complete(rows_);
  batch_ = {};
  batch_.shrink_to_fit();
  map_bytes_ = static_cast<size_t>(rows_ * dim_) * sizeof(float);
  if (map_bytes_ == 0) return;
  void* p = ::mmap(nullptr, map_bytes_, PROT_READ, MAP_SHARED, fd_, 0);
  if (p == MAP_FAILED)
    throw_bad_input(folder_.empty() ? "." : folder_.string(),
                    std::string("cannot map the features file: ") + std::strerror(errno));
  map_ = static_cast<float*>(p);
}

MatrixView FeatureStore::features() const {
  if (!streamed()) return {memory_.get(), rows_, dim_};
  PATCHCORE_ASSERT(map_ != nullptr || rows_ == 0);
  return {map_, rows_, dim_};
}

MatrixView FeatureStore::projected() const {
  PATCHCORE_ASSERT(streamed() && projected_rows_ == rows_);
  return {projected_.ptr(), rows_, projected_.dim(1)};
}

void FeatureStore::read_rows(const std::vector<int64_t>& rows, float* out) const {
  for (size_t i = 0; i < rows.size(); ++i) {
    PATCHCORE_ASSERT(rows[i] >= 0 && rows[i] < rows_);
    float* dst = out + static_cast<int64_t>(i) * dim_;
    if (!streamed()) {
      std::copy_n(memory_.get() + rows[i] * dim_, dim_, dst);
      continue;
    }
    transfer(false, dst, 1, rows[i]);
  }
}

// Writes (pwrite) or reads (pread) `count` rows at row `first` of the file.
void FeatureStore::transfer(bool write, float* rows, int64_t count, int64_t first) const {
  auto* p = reinterpret_cast<char*>(rows);
  size_t left = static_cast<size_t>(count * dim_) * sizeof(float);
  off_t at = static_cast<off_t>(first * dim_) * static_cast<off_t>(sizeof(float));
  while (left > 0) {
    const ssize_t n = write ? ::pwrite(fd_, p, left, at) : ::pread(fd_, p, left, at);
    if (n < 0 && errno == EINTR) continue;
    if (n <= 0)
      throw_bad_input(folder_.empty() ? "." : folder_.string(),
                      std::string(write ? "cannot write the features file: "
                                        : "cannot read the features file back: ") +
                          (n < 0 ? std::strerror(errno) : write ? "no space" : "truncated"));
    p += n;
    at += n;
    left -= static_cast<size_t>(n);
  }
}

void FeatureStore::release(int64_t begin, int64_t end) const {
  if (!map_ || end <= begin) return;
  const int64_t page = ::sysconf(_SC_PAGESIZE);
  auto* base = reinterpret_cast<char*>(map_);
  int64_t from = begin * dim_ * 4 / page * page;
  int64_t to = std::min<int64_t>(static_cast<int64_t>(map_bytes_), end * dim_ * 4);
  if (to > from) ::madvise(base + from, static_cast<size_t>(to - from), MADV_DONTNEED);
}

}  // namespace patchcore
