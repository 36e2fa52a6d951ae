# Checks that the headers under MLA_INCLUDE_DIR/mla include only downward, in the library's
# layer order
#
#   core < simd < kernels < ops < cache < layers < io < conformance < mla.hpp, io.hpp (the umbrellas)
#
# with config.hpp, presets.hpp and version.hpp counted as core. A header may include headers of
# its own layer and of lower ones. reference/ (the double-precision loops the kernels are tested
# against) may include core only, and nothing but reference/ may include it. Run with
#   cmake -DMLA_INCLUDE_DIR=<dir holding mla/> -P check_include_order.cmake
# Fails listing every include against the order.

cmake_policy(VERSION 3.16)

set(_layers core simd kernels ops cache layers io conformance)

# Includes that go against the order, each with the reason it is tolerated (none today).
set(_allowed)

# Sets out_var to the layer index of header `rel` (path from the include dir, "mla/..."),
# -1 for reference/, 100 for the umbrella header; fails for a header of no known layer.
function(_layer_of rel out_var)
  if(rel MATCHES "^mla/(config|presets|version)\\.hpp$")
    set(${out_var} 0 PARENT_SCOPE)
  elseif(rel STREQUAL "mla/mla.hpp" OR rel STREQUAL "mla/io.hpp")
    set(${out_var} 100 PARENT_SCOPE)
  elseif(rel MATCHES "^mla/reference/")
    set(${out_var} -1 PARENT_SCOPE)
  elseif(rel MATCHES "^mla/([a-z_]+)/")
    list(FIND _layers "${CMAKE_MATCH_1}" idx)
    if(idx LESS 0)
      message(FATAL_ERROR "${rel}: folder '${CMAKE_MATCH_1}' is not a layer of "
                          "cmake/check_include_order.cmake (${_layers}); add it there")
    endif()
    set(${out_var} ${idx} PARENT_SCOPE)
  else()
    message(FATAL_ERROR "${rel}: header outside the layers of cmake/check_include_order.cmake")
  endif()
endfunction()

function(_layer_name level out_var)
  if(level EQUAL -1)
    set(${out_var} "reference" PARENT_SCOPE)
  elseif(level EQUAL 100)
    set(${out_var} "the umbrella header" PARENT_SCOPE)
  else()
    list(GET _layers ${level} name)
    set(${out_var} "${name}" PARENT_SCOPE)
  endif()
endfunction()

if(NOT IS_DIRECTORY "${MLA_INCLUDE_DIR}/mla")
  message(FATAL_ERROR "MLA_INCLUDE_DIR (${MLA_INCLUDE_DIR}) holds no mla/ folder")
endif()
file(GLOB_RECURSE _headers RELATIVE "${MLA_INCLUDE_DIR}" "${MLA_INCLUDE_DIR}/mla/*.hpp")
if(NOT _headers)
  message(FATAL_ERROR "no headers under ${MLA_INCLUDE_DIR}/mla (pass an absolute MLA_INCLUDE_DIR)")
endif()
list(SORT _headers)
set(_violations "")
set(_count 0)
foreach(rel IN LISTS _headers)
  _layer_of("${rel}" from)
  file(STRINGS "${MLA_INCLUDE_DIR}/${rel}" lines REGEX "^[ \t]*#[ \t]*include[ \t]*\"mla/")
  foreach(line IN LISTS lines)
    string(REGEX REPLACE "^[ \t]*#[ \t]*include[ \t]*\"([^\"]+)\".*$" "\\1" inc "${line}")
    math(EXPR _count "${_count} + 1")
    _layer_of("${inc}" to)
    if(from EQUAL -1)
      set(ok FALSE)
      if(to EQUAL 0 OR to EQUAL -1)
        set(ok TRUE)
      endif()
    elseif(to EQUAL -1)
      set(ok FALSE)
    elseif(to GREATER from)
      set(ok FALSE)
    else()
      set(ok TRUE)
    endif()
    if(NOT ok AND NOT "${rel} -> ${inc}" IN_LIST _allowed)
      _layer_name(${from} from_name)
      _layer_name(${to} to_name)
      string(APPEND _violations "  ${rel}: includes ${inc} (${to_name}) from layer ${from_name}\n")
    endif()
  endforeach()
endforeach()
if(_violations)
  message(FATAL_ERROR "includes against the layer order (core < simd < kernels < ops < cache < "
                      "layers < io < conformance; reference/ includes core only):\n${_violations}")
endif()
list(LENGTH _headers _n)
message(STATUS "include order: ${_n} headers, ${_count} mla includes, all downward")
