// Parameters: presets, text names of the enums, checks, and the one resolver of the backbone's
// defaults (declared in the public header; this header adds what only the library uses).
#pragma once

#include "patchcore/patchcore.h"

namespace patchcore {

/// Throws Error(usage) naming the parameter (as Params names it) when a value is out of range.
void validate(const Params& p);

}  // namespace patchcore
