// A small generated data set in the MVTec AD layout: the demo's data and the tests' data.
// SyntheticParams and write_synthetic_dataset() are declared in the public header.
#pragma once

#include "patchcore/patchcore.h"
