#include "coreset.h"
