# Which c10d process groups (issue #17) this LibTorch can make. LibTorch does not export its USE_C10D_*
# defines, so each is tried: a program that constructs ProcessGroupGloo (Gloo headers: Debian's
# libgloo-dev; pip wheels ship them) or ProcessGroupNCCL (nccl.h: the CUDA toolkit, $NCCL_HOME or pip's
# nvidia-nccl) must compile. Sets MOELAB_C10D_DEFINITIONS and MOELAB_C10D_INCLUDE_DIRS for
# sdk/distributed.cpp; without either backend runexp still runs, and refuses RANK/WORLD_SIZE with a message.
include(CheckCXXSourceCompiles)

set(MOELAB_C10D_DEFINITIONS "")
set(MOELAB_C10D_INCLUDE_DIRS "")
set(_moelab_c10d_saved_flags ${CMAKE_REQUIRED_FLAGS})
set(_moelab_c10d_saved_libs ${CMAKE_REQUIRED_LIBRARIES})
set(_moelab_c10d_saved_defs ${CMAKE_REQUIRED_DEFINITIONS})
set(_moelab_c10d_saved_incs ${CMAKE_REQUIRED_INCLUDES})
# Compile only (headers and declarations): a try-compile that links the `torch` target re-imports its whole
# link interface, and pip's LibTorch names protobuf::libprotobuf there, a target only the calling project has.
# Both LibTorches tried here export the c10d classes whenever their headers are installed.
set(CMAKE_TRY_COMPILE_TARGET_TYPE STATIC_LIBRARY)
set(CMAKE_REQUIRED_FLAGS "-std=c++17 ${TORCH_CXX_FLAGS}")
set(CMAKE_REQUIRED_LIBRARIES "")
set(_moelab_c10d_includes ${TORCH_INCLUDE_DIRS} ${CUDAToolkit_INCLUDE_DIRS} ${CUDA_INCLUDE_DIRS})
set(CMAKE_REQUIRED_INCLUDES ${_moelab_c10d_includes})

set(CMAKE_REQUIRED_DEFINITIONS -DUSE_C10D_GLOO)
check_cxx_source_compiles([[
#include <torch/csrc/distributed/c10d/ProcessGroupGloo.hpp>
#include <torch/csrc/distributed/c10d/TCPStore.hpp>
int main(int argc, char**) {
  if (argc > 5) {
    auto store = c10::make_intrusive<c10d::TCPStore>("127.0.0.1", c10d::TCPStoreOptions{});
    auto group = c10::make_intrusive<c10d::ProcessGroupGloo>(store, 0, 1, c10d::ProcessGroupGloo::Options::create());
  }
  return 0;
}]] MOELAB_C10D_GLOO_COMPILES)
if(MOELAB_C10D_GLOO_COMPILES)
  list(APPEND MOELAB_C10D_DEFINITIONS USE_C10D_GLOO MOELAB_C10D_GLOO)
endif()

execute_process(COMMAND python3 -c "import nvidia.nccl, os; print(os.path.join(list(nvidia.nccl.__path__)[0], 'include'))"
                OUTPUT_VARIABLE _moelab_pip_nccl OUTPUT_STRIP_TRAILING_WHITESPACE ERROR_QUIET)
find_path(MOELAB_NCCL_INCLUDE_DIR nccl.h HINTS $ENV{NCCL_HOME}/include $ENV{NCCL_ROOT}/include ${_moelab_pip_nccl} /usr/local/cuda/include)
if(MOELAB_NCCL_INCLUDE_DIR)
  set(CMAKE_REQUIRED_DEFINITIONS -DUSE_C10D_NCCL)
  set(CMAKE_REQUIRED_INCLUDES ${_moelab_c10d_includes} ${MOELAB_NCCL_INCLUDE_DIR})
  check_cxx_source_compiles([[
#include <torch/csrc/distributed/c10d/ProcessGroupNCCL.hpp>
#include <torch/csrc/distributed/c10d/TCPStore.hpp>
int main(int argc, char**) {
  if (argc > 5) {
    auto store = c10::make_intrusive<c10d::TCPStore>("127.0.0.1", c10d::TCPStoreOptions{});
    auto group = c10::make_intrusive<c10d::ProcessGroupNCCL>(store, 0, 1, c10d::ProcessGroupNCCL::Options::create());
  }
  return 0;
}]] MOELAB_C10D_NCCL_COMPILES)
  if(MOELAB_C10D_NCCL_COMPILES)
    list(APPEND MOELAB_C10D_DEFINITIONS USE_C10D_NCCL MOELAB_C10D_NCCL)
    list(APPEND MOELAB_C10D_INCLUDE_DIRS ${MOELAB_NCCL_INCLUDE_DIR})
  endif()
endif()

set(CMAKE_REQUIRED_FLAGS ${_moelab_c10d_saved_flags})
set(CMAKE_REQUIRED_LIBRARIES ${_moelab_c10d_saved_libs})
set(CMAKE_REQUIRED_DEFINITIONS ${_moelab_c10d_saved_defs})
set(CMAKE_REQUIRED_INCLUDES ${_moelab_c10d_saved_incs})
unset(CMAKE_TRY_COMPILE_TARGET_TYPE)
message(STATUS "moelab: c10d process groups for torchrun: gloo \"${MOELAB_C10D_GLOO_COMPILES}\", nccl \"${MOELAB_C10D_NCCL_COMPILES}\" (empty or 0: not in this LibTorch)")
