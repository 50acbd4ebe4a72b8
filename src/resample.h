// Bilinear resampling tables shared by the embedding (aligning layers) and the anomaly map.
#pragma once

#include <algorithm>
#include <cstdint>
#include <vector>

namespace patchcore {

/// One output index of a 1-D bilinear resampling: value = w0 * in[i0] + w1 * in[i1].
struct Lerp {
  int i0 = 0, i1 = 0;
  float w0 = 1, w1 = 0;
};

/// align_corners = false, no antialiasing (torch's F.interpolate rule):
/// src = (dst + 0.5) * in / out - 0.5, clamped below at 0 and above at in - 1.
inline std::vector<Lerp> lerp_table(int64_t in, int64_t out) {
  std::vector<Lerp> t(static_cast<size_t>(out));
  const double scale = static_cast<double>(in) / static_cast<double>(out);
  for (int64_t d = 0; d < out; ++d) {
    const double src = std::max(0.0, (static_cast<double>(d) + 0.5) * scale - 0.5);
    const int i0 = static_cast<int>(std::min<int64_t>(static_cast<int64_t>(src), in - 1));
    const double l1 = std::min(src - i0, 1.0);
    t[static_cast<size_t>(d)] = {i0, i0 < in - 1 ? i0 + 1 : i0, static_cast<float>(1.0 - l1),
                                 static_cast<float>(l1)};
  }
  return t;
}

}  // namespace patchcore
