# The SDK's version header (moelab/version.h, installed with the SDK headers) and the git commit header
# (moelab_git.h, host only), refreshed before every build by cmake/GitCommit.cmake.
set(MOELAB_GENERATED_INCLUDE_DIR ${CMAKE_BINARY_DIR}/generated/include)
configure_file(${CMAKE_CURRENT_LIST_DIR}/version.h.in ${MOELAB_GENERATED_INCLUDE_DIR}/moelab/version.h @ONLY)

set(MOELAB_GIT_HEADER ${CMAKE_BINARY_DIR}/generated/host/moelab_git.h)
execute_process(COMMAND ${CMAKE_COMMAND} -DSOURCE_DIR=${PROJECT_SOURCE_DIR} -DOUT=${MOELAB_GIT_HEADER}
                        -P ${CMAKE_CURRENT_LIST_DIR}/GitCommit.cmake)
# Runs on every build; BYPRODUCTS lets Ninja see that the header kept its old time when nothing changed.
add_custom_target(moelab_git_commit
                  COMMAND ${CMAKE_COMMAND} -DSOURCE_DIR=${PROJECT_SOURCE_DIR} -DOUT=${MOELAB_GIT_HEADER}
                          -P ${CMAKE_CURRENT_LIST_DIR}/GitCommit.cmake
                  BYPRODUCTS ${MOELAB_GIT_HEADER}
                  COMMENT "Checking the git commit" VERBATIM)
