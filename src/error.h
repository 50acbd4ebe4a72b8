// Errors the library reports to its users, and the assertion used for bugs.
#pragma once

#include <cstdlib>
#include <stdexcept>
#include <string>

#include "patchcore/patchcore.h"

// throw_bad_input() and throw_usage(): in the public header.

// A broken invariant is a bug in this library, not a user error: report where and abort loudly
// through an internal Error so that the CLI exits with code 1.
#define PATCHCORE_ASSERT(cond)                                                              \
  do {                                                                                      \
    if (!(cond))                                                                            \
      throw ::patchcore::Error(::patchcore::ErrorKind::internal,                            \
                               std::string("internal error: assertion failed: ") + #cond + \
                                   " at " + __FILE__ + ":" + std::to_string(__LINE__));     \
  } while (0)
