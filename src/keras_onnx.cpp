#include "keras_onnx.h"
