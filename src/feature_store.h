// Fit's patch features [rows, dim]: in memory, or streamed to a nameless file when they would
// not fit, with only the coreset's projected rows kept in memory.
#pragma once

#include <cstdint>
#include <filesystem>
#include <memory>
#include <vector>

#include "tensor.h"

namespace patchcore {

class FeatureStore {
 public:
  /// In memory: one [capacity, dim] buffer, allocated without zeroing (the embedding's threads
  /// fault its pages in, in parallel).
  FeatureStore(int64_t capacity, int64_t dim);
  /// Streamed: rows go to a file created in `folder` without a name (O_TMPFILE, else a
  /// mkstemp file unlinked at once), so that it disappears however the process ends (success,
  /// an error, Ctrl-C, kill -9). Each complete chunk of 1,024 rows is projected as it arrives
  /// (coreset_projection_matrix(dim, proj_dim, seed); the rows themselves when dim <= proj_dim),
  /// bit for bit what coreset_project() of all rows gives. Throws Error(bad_input) naming the
  /// folder when no file can be created there.
  FeatureStore(int64_t capacity, int64_t dim, const std::filesystem::path& folder, int proj_dim,
               uint64_t seed, int threads);
  ~FeatureStore();
  FeatureStore(const FeatureStore&) = delete;
  FeatureStore& operator=(const FeatureStore&) = delete;

  /// Where the next `rows` rows go (valid until commit).
  float* next(int64_t rows);
  /// The rows written at next() are complete. Throws Error(bad_input) naming the folder when
  /// the disk is full.
  void commit(int64_t rows);
  /// No more rows: projects the last chunk and maps the file for reading.
  void finish();

  bool streamed() const { return fd_ >= 0; }
  int64_t rows() const { return rows_; }
  int64_t dim() const { return dim_; }
  /// Every row committed (after finish() when streamed: the file's mapping).
  MatrixView features() const;
  /// Streamed only: the projected rows [rows, proj_dim] (the rows themselves when
  /// dim <= proj_dim).
  MatrixView projected() const;
  /// Copies rows[i] to out + i * dim. Streamed: read from the file (pread), without touching
  /// the mapping: reading the scattered picks through it faulted in most of the file
  /// (read-ahead around each row), a transient RSS as large as the features.
  void read_rows(const std::vector<int64_t>& rows, float* out) const;
  /// Streamed: drops rows [begin, end) from this process's resident pages (they stay in the
  /// file); in memory: nothing.
  void release(int64_t begin, int64_t end) const;
  /// Bytes written to the file (0 in memory).
  int64_t file_bytes() const { return streamed() ? rows_ * dim_ * 4 : 0; }

 private:
  void project_complete(int64_t upto);
  void transfer(bool write, float* rows, int64_t count, int64_t first) const;

  int64_t capacity_ = 0, dim_ = 0, rows_ = 0;
  std::unique_ptr<float[]> memory_;
  // streamed
  int fd_ = -1;
  std::filesystem::path folder_;
  int proj_dim_ = 0;
  int threads_ = 0;
  std::vector<float> matrix_;
  std::vector<float> batch_;
  Tensor projected_;
  int64_t projected_rows_ = 0;
  float* map_ = nullptr;
  size_t map_bytes_ = 0;
};

}  // namespace patchcore
