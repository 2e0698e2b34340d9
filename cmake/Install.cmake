# `cmake --install` gives, under GNU standard directories: runexp (bin), the versioned SDK library (lib),
# its headers with moelab/version.h (include), the in-tree plugins in lib/moelab/plugins (where an
# installed runexp looks), the built-in models (share/moelab/models) and a CMake package so that
# out-of-tree plugins build with find_package(moelab) + moelab_add_plugin().
include(CMakePackageConfigHelpers)

file(RELATIVE_PATH moelab_bin_to_lib /${CMAKE_INSTALL_BINDIR} /${CMAKE_INSTALL_LIBDIR})
set_target_properties(runexp PROPERTIES INSTALL_RPATH "$ORIGIN/${moelab_bin_to_lib}")
install(TARGETS runexp RUNTIME DESTINATION ${CMAKE_INSTALL_BINDIR})
install(TARGETS moelab_sdk EXPORT moelabTargets LIBRARY DESTINATION ${CMAKE_INSTALL_LIBDIR})
install(DIRECTORY framework/include/moelab DESTINATION ${CMAKE_INSTALL_INCLUDEDIR})
install(FILES ${MOELAB_GENERATED_INCLUDE_DIR}/moelab/version.h DESTINATION ${CMAKE_INSTALL_INCLUDEDIR}/moelab)
install(EXPORT moelabTargets NAMESPACE moelab:: DESTINATION ${CMAKE_INSTALL_LIBDIR}/cmake/moelab)
configure_package_config_file(cmake/moelabConfig.cmake.in ${CMAKE_BINARY_DIR}/moelabConfig.cmake
                              INSTALL_DESTINATION ${CMAKE_INSTALL_LIBDIR}/cmake/moelab)
write_basic_package_version_file(${CMAKE_BINARY_DIR}/moelabConfigVersion.cmake COMPATIBILITY SameMinorVersion)
install(FILES ${CMAKE_BINARY_DIR}/moelabConfig.cmake ${CMAKE_BINARY_DIR}/moelabConfigVersion.cmake
              cmake/MoelabPlugin.cmake DESTINATION ${CMAKE_INSTALL_LIBDIR}/cmake/moelab)
install(DIRECTORY ${CMAKE_BINARY_DIR}/models/ DESTINATION ${CMAKE_INSTALL_DATADIR}/moelab/models)
