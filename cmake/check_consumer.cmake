# Builds examples/consumer against mla and runs it. Run with `cmake -P`; fails on any
# configure/build/run error. Modes:
#   MLA_BUILD_DIR given:   install that build tree into a scratch prefix, then find_package(mla)
#   MLA_EIGEN_ONLY=ON:     configure MLA_SOURCE_DIR with GoogleTest, Google Benchmark and
#                          nlohmann_json hidden, install it, check that mla::io was left out, then
#                          find_package(mla)
#   otherwise:             add_subdirectory(MLA_SOURCE_DIR)
# The consumer also builds mla_consumer_io when mla::io exists; it is run when built.
file(REMOVE_RECURSE "${WORK_DIR}")
file(MAKE_DIRECTORY "${WORK_DIR}")

function(run_or_fail)
  execute_process(COMMAND ${ARGN} RESULT_VARIABLE rc OUTPUT_VARIABLE out ERROR_VARIABLE err)
  if(NOT rc EQUAL 0)
    message(FATAL_ERROR "command failed (${rc}): ${ARGN}\n${out}\n${err}")
  endif()
  set(run_output "${out}" PARENT_SCOPE)
endfunction()

if(DEFINED MLA_BUILD_DIR)
  run_or_fail(${CMAKE_COMMAND} --install "${MLA_BUILD_DIR}" --prefix "${WORK_DIR}/prefix")
  set(mode_args "-DCMAKE_PREFIX_PATH=${WORK_DIR}/prefix")
elseif(MLA_EIGEN_ONLY)
  run_or_fail(${CMAKE_COMMAND} -S "${MLA_SOURCE_DIR}" -B "${WORK_DIR}/mla-build"
              -DCMAKE_CXX_COMPILER=${CMAKE_CXX_COMPILER} -DCMAKE_BUILD_TYPE=Release
              -DMLA_BUILD_TESTS=ON -DMLA_BUILD_BENCHMARKS=ON -DMLA_BUILD_EXAMPLES=ON -DMLA_INSTALL=ON
              -DCMAKE_DISABLE_FIND_PACKAGE_GTest=ON -DCMAKE_DISABLE_FIND_PACKAGE_benchmark=ON
              -DCMAKE_DISABLE_FIND_PACKAGE_nlohmann_json=ON)
  # Each missing package is reported, not silently dropped.
  foreach(pkg IN ITEMS "GoogleTest" "Google Benchmark" "nlohmann_json")
    string(FIND "${run_output}" "mla: ${pkg} not found" at)
    if(at EQUAL -1)
      message(FATAL_ERROR "configure without ${pkg} printed no skip message:\n${run_output}")
    endif()
  endforeach()
  run_or_fail(${CMAKE_COMMAND} --install "${WORK_DIR}/mla-build" --prefix "${WORK_DIR}/prefix")
  file(GLOB_RECURSE io_exports "${WORK_DIR}/prefix/*/mlaIoTargets.cmake")
  file(GLOB_RECURSE configs "${WORK_DIR}/prefix/*/mlaConfig.cmake")
  if(io_exports OR NOT configs)
    message(FATAL_ERROR "Eigen-only install: expected mlaConfig.cmake and no mlaIoTargets.cmake, "
                        "got '${configs}' and '${io_exports}'")
  endif()
  set(mode_args "-DCMAKE_PREFIX_PATH=${WORK_DIR}/prefix")
else()
  set(mode_args "-DMLA_SOURCE_DIR=${MLA_SOURCE_DIR}")
endif()
run_or_fail(${CMAKE_COMMAND} -S "${CONSUMER_SOURCE_DIR}" -B "${WORK_DIR}/build"
            -DCMAKE_CXX_COMPILER=${CMAKE_CXX_COMPILER} -DCMAKE_BUILD_TYPE=Release ${mode_args})
run_or_fail(${CMAKE_COMMAND} --build "${WORK_DIR}/build")
run_or_fail("${WORK_DIR}/build/mla_consumer")
if(EXISTS "${WORK_DIR}/build/mla_consumer_io")
  if(MLA_EIGEN_ONLY)
    message(FATAL_ERROR "Eigen-only install: the consumer found mla::io")
  endif()
  run_or_fail("${WORK_DIR}/build/mla_consumer_io")
elseif(NOT MLA_EIGEN_ONLY AND EXPECT_IO)
  message(FATAL_ERROR "mla::io was expected but the consumer did not find it")
endif()
