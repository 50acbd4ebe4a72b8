// Approximate greedy coreset (minimax facility location) over the memory bank.
#pragma once

#include <cstdint>
#include <functional>
#include <vector>

#include "tensor.h"

namespace patchcore {

struct CoresetParams {
  double ratio = 0.01;  ///< picks = max(1, floor(ratio * N)); ratio >= 1 keeps every row
  int proj_dim = 128;   ///< random projection dimension; no projection when D <= proj_dim
  uint64_t seed = 0;
  int start_points = 10;  ///< initial distance = mean L2 distance to this many random rows
  int threads = 0;        ///< 0: all cores
};

using CoresetProgress = std::function<void(int64_t done, int64_t total)>;

/// features [N, D]. Projects to proj_dim with a seeded Gaussian map (N(0, 1/proj_dim)), sets
/// every row's distance to its mean L2 distance to start_points random rows (not selected),
/// then repeatedly picks the row with the largest distance (lowest index on ties) and lowers
/// every distance to min(old, L2 distance to the pick). Returns the picked row indices in pick
/// order. Deterministic for a given seed and input.
std::vector<int64_t> greedy_coreset(const Tensor& features, const CoresetParams& p,
                                    const CoresetProgress& progress = {});

/// The plain algorithm, one full pass per pick, in double precision where it matters: the
/// yardstick for greedy_coreset() in tests (the picks must be identical).
std::vector<int64_t> greedy_coreset_reference(const Tensor& features, const CoresetParams& p);

}  // namespace patchcore
