#include "knn.h"
