# `cmake --install` gives runexp, the SDK library and headers, the in-tree plugins, and a CMake
# package so that out-of-tree plugins build with find_package(moelab) + moelab_add_plugin().
include(CMakePackageConfigHelpers)

set_target_properties(runexp PROPERTIES INSTALL_RPATH "$ORIGIN/../lib")
install(TARGETS runexp RUNTIME DESTINATION bin)
install(TARGETS moelab_sdk EXPORT moelabTargets LIBRARY DESTINATION lib)
install(DIRECTORY framework/include/moelab DESTINATION include)
install(EXPORT moelabTargets NAMESPACE moelab:: DESTINATION lib/cmake/moelab)
configure_package_config_file(cmake/moelabConfig.cmake.in ${CMAKE_BINARY_DIR}/moelabConfig.cmake
                              INSTALL_DESTINATION lib/cmake/moelab)
write_basic_package_version_file(${CMAKE_BINARY_DIR}/moelabConfigVersion.cmake COMPATIBILITY SameMinorVersion)
install(FILES ${CMAKE_BINARY_DIR}/moelabConfig.cmake ${CMAKE_BINARY_DIR}/moelabConfigVersion.cmake
              cmake/MoelabPlugin.cmake DESTINATION lib/cmake/moelab)
install(DIRECTORY ${CMAKE_BINARY_DIR}/models/ DESTINATION share/moelab/models)
