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
#include <type_traits>
#include <vector>

namespace mla {
namespace internal {

/// One argument of an error message, held by value (numbers, characters) or by pointer (text,
/// anything else streamable, which must outlive the piece: str_cat's arguments do).
class MessagePiece {
 public:
  template <class T>
  MessagePiece(const T& v) {  // NOLINT(google-explicit-constructor): built from str_cat's args
    if constexpr (std::is_convertible_v<const T&, const char*>) {
      kind_ = kText;
      text_ = v;
    } else if constexpr (std::is_same_v<T, std::string>) {
      kind_ = kText;
      text_ = v.c_str();
    } else if constexpr (std::is_same_v<T, char> || std::is_same_v<T, signed char> ||
                         std::is_same_v<T, unsigned char>) {
      kind_ = kChar;
      c_ = static_cast<char>(v);
    } else if constexpr (std::is_same_v<T, bool>) {
      kind_ = kChar;
      c_ = v ? '1' : '0';
    } else if constexpr (std::is_integral_v<T> && std::is_signed_v<T>) {
      kind_ = kSigned;
      i_ = v;
    } else if constexpr (std::is_integral_v<T>) {
      kind_ = kUnsigned;
      u_ = v;
    } else if constexpr (std::is_same_v<T, double> || std::is_same_v<T, float>) {
      kind_ = kDouble;
      d_ = v;
    } else {
      kind_ = kOther;
      other_ = &v;
      stream_ = [](std::ostream& os, const void* p) { os << *static_cast<const T*>(p); };
    }
  }

  /// Streams the piece as `os << value` would the original argument (bool as 0/1, a null char
  /// pointer as nothing).
  void stream(std::ostream& os) const {
    switch (kind_) {
      case kText: if (text_ != nullptr) os << text_; break;
      case kChar: os << c_; break;
      case kSigned: os << i_; break;
      case kUnsigned: os << u_; break;
      case kDouble: os << d_; break;
      case kOther: stream_(os, other_); break;
    }
  }

 private:
  enum Kind { kText, kChar, kSigned, kUnsigned, kDouble, kOther } kind_;
  union {
    const char* text_;
    char c_;
    long long i_;
    unsigned long long u_;
    double d_;
    const void* other_;
  };
  void (*stream_)(std::ostream&, const void*) = nullptr;
};

/// The pieces streamed one after the other into one string. Out of line: every message of a
/// translation unit shares it, and a check site only fills its array of pieces.
#if defined(__GNUC__) || defined(__clang__)
__attribute__((noinline, cold))
#endif
inline std::string join_message(const MessagePiece* pieces, std::size_t n) {
  std::ostringstream os;
  for (std::size_t i = 0; i < n; ++i) pieces[i].stream(os);
  return os.str();
}

/// Concatenates any streamable values into one string (for error messages), formatted as
/// `std::ostream << value` formats each.
template <class... Args>
std::string str_cat(const Args&... args) {
  if constexpr (sizeof...(Args) == 0) {
    return std::string();
  } else {
    const MessagePiece pieces[] = {MessagePiece(args)...};
    return join_message(pieces, sizeof...(Args));
  }
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
