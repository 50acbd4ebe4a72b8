#include "backbone.h"
