# External dependencies, all from Debian's archive (see third_party/README.md).
# A pip-installed LibTorch works too: pass CMAKE_PREFIX_PATH=$(python3 -c 'import torch;print(torch.utils.cmake_prefix_path)').

find_program(MOELAB_CCACHE ccache)
if(MOELAB_CCACHE AND NOT CMAKE_CXX_COMPILER_LAUNCHER)
  set(CMAKE_CXX_COMPILER_LAUNCHER ${CMAKE_COMMAND} -E env
      CCACHE_SLOPPINESS=pch_defines,time_macros,include_file_mtime,include_file_ctime ${MOELAB_CCACHE})
endif()

find_package(Torch REQUIRED)
find_package(fmt REQUIRED)
find_package(tomlplusplus REQUIRED)
find_package(nlohmann_json REQUIRED)
find_package(Boost 1.70 REQUIRED)
find_package(ICU REQUIRED COMPONENTS uc)
find_path(PCRE2_INCLUDE_DIR pcre2.h REQUIRED)
find_library(PCRE2_LIBRARY pcre2-8 REQUIRED)
add_library(moelab_pcre2 INTERFACE IMPORTED)
target_include_directories(moelab_pcre2 INTERFACE ${PCRE2_INCLUDE_DIR})
target_link_libraries(moelab_pcre2 INTERFACE ${PCRE2_LIBRARY})
