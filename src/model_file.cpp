#include "model_file.h"
