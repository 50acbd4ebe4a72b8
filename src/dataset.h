// Where the images are: an MVTec AD category folder or a plain folder of images. Sample,
// Dataset, list_images() and scan_dataset() are declared in the public header.
#pragma once

#include "patchcore/patchcore.h"
