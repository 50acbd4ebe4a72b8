// Approximate greedy coreset (minimax facility location) over the memory bank.
#pragma once

#include <cstdint>
#include <functional>
#include <vector>

#include "tensor.h"

namespace patchcore {

struct CoresetParams {
  double ratio = 0.01;    ///< picks = max(1, floor(ratio * N), min(N, min_picks))
  int64_t min_picks = 0;  ///< floor on the picks; ratio >= 1 or min_picks >= N keeps every row
  int proj_dim = 128;     ///< random projection dimension; no projection when D <= proj_dim
  uint64_t seed = 0;
  int start_points = 10;  ///< initial distance = mean L2 distance to this many random rows
  int threads = 0;        ///< 0: all cores
};

using CoresetProgress = std::function<void(int64_t done, int64_t total)>;

/// What a greedy search found besides its picks.
struct CoresetStats {
  /// L2 distance, in the space the search ran in (the projection; the features themselves when
  /// D <= proj_dim), of the last pick from the picks before it: the coverage radius, within
  /// which the picks hold (nearly) every row. 0 when every row was kept.
  float radius = 0;
};

/// features [N, D]. Projects to proj_dim with a seeded Gaussian map (N(0, 1/proj_dim)), sets
/// every row's distance to its mean L2 distance to start_points random rows (distinct, drawn
/// from the seed, not selected; clamped to N), then repeatedly picks the row with the largest
/// distance (lowest index on ties) and lowers every distance to min(old, L2 distance to the
/// pick). Returns the picked row indices in pick order: max(1, floor(ratio * N), min_picks) of
/// them, or 0..N-1 in order when ratio >= 1 or min_picks >= N (no selection); empty when N == 0.
/// Deterministic for a given seed and input, whatever the thread count. Lazy: runs of consecutive
/// rows are brought up to date with the picks they missed only when they could hold the next pick,
/// and a row skips the picks that a bound along the 16 principal directions proves too far; the
/// picks stay exactly those of greedy_coreset_reference(). Threads share the projection, the
/// set-up and the updates; `progress` is called on the calling thread, and an exception it throws
/// stops the search and reaches the caller. Throws Error(usage) for ratio <= 0, min_picks < 0,
/// proj_dim or start_points < 1, a non-2-D tensor, or features with NaN, infinity or
/// |value| > 1e17 after projection.
std::vector<int64_t> greedy_coreset(const Tensor& features, const CoresetParams& p,
                                    const CoresetProgress& progress = {});
/// The same on rows held elsewhere (fit's memory bank); `stats`, when given, receives the
/// coverage radius.
std::vector<int64_t> greedy_coreset(MatrixView features, const CoresetParams& p,
                                    const CoresetProgress& progress = {},
                                    CoresetStats* stats = nullptr);
/// The same search on rows already in the search space: coreset_project() of the features
/// (in fixed chunks of 1,024 rows counted from row 0, so that rows projected a chunk at a
/// time give the same bits), or the features themselves when D <= proj_dim. The picks equal
/// greedy_coreset()'s on the features. Fit uses it when the features stream to disk.
std::vector<int64_t> greedy_coreset_projected(MatrixView projected, const CoresetParams& p,
                                              const CoresetProgress& progress = {},
                                              CoresetStats* stats = nullptr);

/// Continues a greedy search over new rows: sq_distance[i] holds row i's squared distance to
/// the picks so far (the bank), rows [N, d] are in the search space. Picks the row farthest
/// from the bank and the earlier picks (lowest index on ties) while that distance exceeds
/// `radius` and fewer than max_picks (< 0: no limit) were made; returns the picks in order.
/// sq_distance is updated to the final minima. Plain loop, one pass per pick: updates are
/// small next to a fit.
std::vector<int64_t> coreset_extend(MatrixView rows, std::vector<float>& sq_distance, float radius,
                                    int64_t max_picks, int threads = 0);

/// The plain algorithm, single-threaded (apart from the shared set-up), one full pass per pick:
/// the yardstick for greedy_coreset() in tests (the picks must be identical). Both run on the
/// same projected float rows and the same distances: coreset_sq_distance() (float, fixed
/// summation order), with the start means averaged in double. A double-precision reference
/// would not do: near-ties between float and double distances would flip picks.
std::vector<int64_t> greedy_coreset_reference(const Tensor& features, const CoresetParams& p);

/// The projection used above: [d, proj_dim] row-major, entries N(0, 1/proj_dim) from the seed
/// through std::mt19937_64 and Box-Muller (no std:: distribution, so the same on every
/// standard library).
std::vector<float> coreset_projection_matrix(int64_t d, int proj_dim, uint64_t seed);

/// features [N, D] times matrix [D, proj_dim] -> [N, proj_dim] by BLAS sgemm on fixed chunks of
/// 1,024 rows, one single-threaded call each: the same bits for every thread count (not
/// necessarily across CPUs, whose BLAS kernels differ). threads <= 0: all cores.
Tensor coreset_project(const Tensor& features, const std::vector<float>& matrix, int proj_dim,
                       int threads = 0);
/// The same on rows held elsewhere.
Tensor coreset_project(MatrixView features, const std::vector<float>& matrix, int proj_dim,
                       int threads = 0);
/// Rows in the coreset's search space: projected with coreset_projection_matrix(D, proj_dim,
/// seed) when D > proj_dim, else copied.
Tensor coreset_search_rows(MatrixView features, int proj_dim, uint64_t seed, int threads = 0);

/// The squared L2 distance of the coreset search: float differences squared into 16 lane
/// accumulators (element j goes to lane j % 16, in order), then a fixed pairwise tree. Its
/// relative error against the exact value is below 2 (ceil(d / 16) + 6) 2^-24 (plus underflow
/// near FLT_MIN), the bound the fast path's skipping relies on.
float coreset_sq_distance(const float* a, const float* b, int64_t d);

/// The search's cheap test, exposed so that tests can hold both kernels to a double yardstick.
/// row: a row's coordinates along the 16 leading principal directions; tile_coords: those of
/// 64 picks, transposed [16, 64]; tile_slack: 64 finite per-pick slacks (entries from `count` on
/// are ignored). Writes to out, in order, kept[m] for each m < count with
/// sum_l fl(row[l] - tile_coords[l * 64 + m])^2 (1 - 5e-6) - tile_slack[m] < threshold, the sum
/// rounded in float; returns how many. `fused`: FMA (needs coreset_fma_available()), else
/// multiply and add.
constexpr int kCoresetSubspaceDim = 16;
constexpr int kCoresetFilterTile = 64;
int coreset_subspace_filter(const float* row, const float* tile_coords, const float* tile_slack,
                            const int64_t* kept, int count, float threshold, int64_t* out,
                            bool fused);
bool coreset_fma_available();

}  // namespace patchcore
