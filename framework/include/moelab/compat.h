// Differences between the LibTorch versions moelab builds against (Debian's 1.13 and pip's 2.x).
#pragma once

#include <torch/version.h>

#define MOELAB_TORCH_AT_LEAST(major, minor) \
  (TORCH_VERSION_MAJOR > (major) || (TORCH_VERSION_MAJOR == (major) && TORCH_VERSION_MINOR >= (minor)))
