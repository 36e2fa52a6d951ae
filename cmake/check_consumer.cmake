# Builds examples/consumer against mla, either through find_package(mla) after installing the
# build tree into a scratch prefix (MLA_BUILD_DIR given) or through add_subdirectory
# (MLA_SOURCE_DIR given). Run with `cmake -P`; fails on any configure/build/run error.
file(REMOVE_RECURSE "${WORK_DIR}")
file(MAKE_DIRECTORY "${WORK_DIR}")

function(run_or_fail)
  execute_process(COMMAND ${ARGN} RESULT_VARIABLE rc OUTPUT_VARIABLE out ERROR_VARIABLE err)
  if(NOT rc EQUAL 0)
    message(FATAL_ERROR "command failed (${rc}): ${ARGN}\n${out}\n${err}")
  endif()
endfunction()

if(DEFINED MLA_BUILD_DIR)
  run_or_fail(${CMAKE_COMMAND} --install "${MLA_BUILD_DIR}" --prefix "${WORK_DIR}/prefix")
  set(mode_args "-DCMAKE_PREFIX_PATH=${WORK_DIR}/prefix")
else()
  set(mode_args "-DMLA_SOURCE_DIR=${MLA_SOURCE_DIR}")
endif()
run_or_fail(${CMAKE_COMMAND} -S "${CONSUMER_SOURCE_DIR}" -B "${WORK_DIR}/build"
            -DCMAKE_CXX_COMPILER=${CMAKE_CXX_COMPILER} -DCMAKE_BUILD_TYPE=Release ${mode_args})
run_or_fail(${CMAKE_COMMAND} --build "${WORK_DIR}/build")
run_or_fail("${WORK_DIR}/build/mla_consumer")
