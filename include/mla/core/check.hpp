// Error reporting for mla. Bad input (wrong shapes, configs that do not add up, malformed files,
// cache overflow) is reported by throwing: std::invalid_argument for arguments the caller passed,
// std::runtime_error for data read from files. Messages name the tensor or field, the expected
// and the actual values. Checks run once at API boundaries, never in inner loops; invariants
// inside hot loops use MLA_DCHECK, which compiles out under NDEBUG. Sizes formed from the caller's
// numbers (capacity x row width, sums of token counts) go through internal::checked_mul /
// checked_add, so a value that would overflow int64 is an std::invalid_argument naming it, never
// signed-overflow undefined behaviour or a wrapped size.
#pragma once

#include <cassert>
#include <cstdint>
#include <initializer_list>
#include <limits>
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

namespace mla {
namespace internal {

/// Formats operands as "a <op> b <op> c" for the messages below.
inline std::string join_operands(std::initializer_list<std::int64_t> operands, const char* op) {
  std::ostringstream os;
  bool first = true;
  for (std::int64_t v : operands) {
    os << (first ? "" : op) << v;
    first = false;
  }
  return os.str();
}

/// Product of sizes or counts that come from the caller (capacities, token counts, widths),
/// formed without signed overflow: throws std::invalid_argument when an operand is negative or
/// the product exceeds int64. `what` names the product and its operands, e.g.
/// "KvCache: kv_heads * capacity * head_dim"; the message adds their values.
inline std::int64_t checked_mul(const char* what, std::initializer_list<std::int64_t> operands) {
  std::int64_t product = 1;
  for (std::int64_t v : operands)
    MLA_CHECK_ARG(v >= 0, what, " = ", join_operands(operands, " * "),
                  ": operands must be non-negative");
  for (std::int64_t v : operands) {
    MLA_CHECK_ARG(v == 0 || product <= std::numeric_limits<std::int64_t>::max() / v, what, " = ",
                  join_operands(operands, " * "), " overflows int64 (max ",
                  std::numeric_limits<std::int64_t>::max(), ")");
    product *= v;
  }
  return product;
}

/// Sum of non-negative sizes or counts from the caller, checked like checked_mul().
inline std::int64_t checked_add(const char* what, std::initializer_list<std::int64_t> operands) {
  std::int64_t sum = 0;
  for (std::int64_t v : operands) {
    MLA_CHECK_ARG(v >= 0, what, " = ", join_operands(operands, " + "),
                  ": operands must be non-negative");
    MLA_CHECK_ARG(sum <= std::numeric_limits<std::int64_t>::max() - v, what, " = ",
                  join_operands(operands, " + "), " overflows int64 (max ",
                  std::numeric_limits<std::int64_t>::max(), ")");
    sum += v;
  }
  return sum;
}

/// Elements of a buffer of T sized by the product of `operands` (checked_mul), also checking
/// that its bytes fit in int64, so that a std::vector<T> of that size is representable and the
/// allocation either succeeds or throws std::bad_alloc.
template <class T>
std::int64_t checked_elements(const char* what, std::initializer_list<std::int64_t> operands) {
  const std::int64_t n = checked_mul(what, operands);
  MLA_CHECK_ARG(n <= std::numeric_limits<std::int64_t>::max() / std::int64_t(sizeof(T)), what,
                " = ", n, " elements of ", sizeof(T), " bytes: the byte count overflows int64");
  return n;
}

}  // namespace internal
}  // namespace mla
