// Error reporting for mla. Bad input (wrong shapes, configs that do not add up, malformed files,
// cache overflow) is reported by throwing: std::invalid_argument for arguments the caller passed,
// std::runtime_error for data read from files. Messages name the tensor or field, the expected
// and the actual values. Checks run once at API boundaries, never in inner loops; invariants
// inside hot loops use MLA_DCHECK, which compiles out under NDEBUG.
#pragma once

#include <cassert>
#include <cstdint>
#include <sstream>
#include <stdexcept>
#include <string>
#include <vector>

namespace mla {
namespace internal {

/// Concatenates any streamable values into one string (for error messages).
template <class... Args>
std::string str_cat(const Args&... args) {
  std::ostringstream os;
  (os << ... << args);
  return os.str();
}

/// Formats a shape as "[a, b, c]".
template <class Int>
std::string shape_str(const std::vector<Int>& shape) {
  std::ostringstream os;
  os << '[';
  for (std::size_t i = 0; i < shape.size(); ++i) os << (i ? ", " : "") << shape[i];
  os << ']';
  return os.str();
}

}  // namespace internal
}  // namespace mla

/// Throws std::invalid_argument with the concatenated message when `cond` is false.
#define MLA_CHECK_ARG(cond, ...) \
  do {                           \
    if (!(cond)) throw std::invalid_argument(::mla::internal::str_cat(__VA_ARGS__)); \
  } while (0)

/// Throws std::runtime_error with the concatenated message when `cond` is false.
#define MLA_CHECK_DATA(cond, ...) \
  do {                            \
    if (!(cond)) throw std::runtime_error(::mla::internal::str_cat(__VA_ARGS__)); \
  } while (0)

/// Debug-only invariant for hot paths.
#define MLA_DCHECK(cond) assert(cond)
