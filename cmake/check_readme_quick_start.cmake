# Checks that the README's quick start is examples/consumer/main.cpp verbatim: the first ```cpp
# block after the "## Quick start" heading must equal SOURCE. Run with
# `cmake -P check_readme_quick_start.cmake -DREADME=<README.md> -DSOURCE=<main.cpp>` (the -D
# options before -P).
file(READ "${README}" readme)
file(READ "${SOURCE}" source)
set(heading "\n## Quick start\n")
string(FIND "${readme}" "${heading}" at)
if(at EQUAL -1)
  message(FATAL_ERROR "${README}: no '## Quick start' heading")
endif()
string(SUBSTRING "${readme}" ${at} -1 rest)
set(open "\n```cpp\n")
string(FIND "${rest}" "${open}" begin)
if(begin EQUAL -1)
  message(FATAL_ERROR "${README}: no ```cpp block after '## Quick start'")
endif()
string(LENGTH "${open}" open_len)
math(EXPR begin "${begin} + ${open_len}")
string(SUBSTRING "${rest}" ${begin} -1 rest)
string(FIND "${rest}" "\n```" end)
if(end EQUAL -1)
  message(FATAL_ERROR "${README}: the quick-start block is not closed")
endif()
math(EXPR end "${end} + 1")  # keep the block's last newline, as the source file ends with one
string(SUBSTRING "${rest}" 0 ${end} block)
if(NOT block STREQUAL source)
  file(WRITE "${CMAKE_CURRENT_BINARY_DIR}/readme_quick_start.cpp" "${block}")
  message(FATAL_ERROR "The README's quick start differs from ${SOURCE}; the block as read is in "
                      "${CMAKE_CURRENT_BINARY_DIR}/readme_quick_start.cpp (compare with diff)")
endif()
message(STATUS "README quick start == ${SOURCE}")
