#include "threshold.h"
