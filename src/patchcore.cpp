// Public API implementation (in progress).
#include "patchcore/patchcore.h"
