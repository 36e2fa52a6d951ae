// core/check.hpp: the error-reporting macros and the checked size arithmetic. Messages are held
// to the words the header documents; the overflow bounds are INT64_MAX and powers of two whose
// products are known exactly.
#include <gtest/gtest.h>

#include <cstdint>
#include <limits>
#include <stdexcept>
#include <string>
#include <vector>

#include "mla/core/check.hpp"
#include "support/error_message.hpp"

namespace mla {
namespace {

using testing::invalid_argument_of;
using testing::message_of;

constexpr std::int64_t kMax = std::numeric_limits<std::int64_t>::max();
constexpr std::int64_t k2p58 = std::int64_t{1} << 58;  // 2^58 * 576 = 9 * 2^64: wraps to 0

TEST(Check, MacrosThrowTheDocumentedTypesWithTheConcatenatedMessage) {
  const int got = 3;
  const std::string arg = invalid_argument_of([&] { MLA_CHECK_ARG(got == 4, "x (", got, ") != ", 4); });
  EXPECT_EQ(arg, "x (3) != 4");
  const std::string data =
      message_of<std::runtime_error>([&] { MLA_CHECK_DATA(false, "file '", "a.bin", "' is short"); });
  EXPECT_EQ(data, "file 'a.bin' is short");
  // std::invalid_argument is not a std::runtime_error: callers can tell the two apart.
  EXPECT_THROW(MLA_CHECK_ARG(false, "x"), std::invalid_argument);
  EXPECT_THROW(MLA_CHECK_DATA(false, "x"), std::runtime_error);
}

TEST(Check, APassingCheckDoesNotFormItsMessage) {
  int formed = 0;
  auto costly = [&] {
    ++formed;
    return std::string("message");
  };
  MLA_CHECK_ARG(true, costly());
  MLA_CHECK_DATA(true, costly());
  EXPECT_EQ(formed, 0);
  EXPECT_THROW(MLA_CHECK_ARG(false, costly()), std::invalid_argument);
  EXPECT_EQ(formed, 1);
}

TEST(Check, ShapeAndOperandFormatting) {
  EXPECT_EQ(internal::shape_str(std::vector<std::int64_t>{}), "[]");
  EXPECT_EQ(internal::shape_str(std::vector<std::int64_t>{7}), "[7]");
  EXPECT_EQ(internal::shape_str(std::vector<int>{2, 3, 4}), "[2, 3, 4]");
  EXPECT_EQ(internal::join_operands({1, 2, 3}, " * "), "1 * 2 * 3");
  EXPECT_EQ(internal::str_cat("a", 1, ' ', 2.5), "a1 2.5");
}

TEST(CheckedArithmetic, NamesTheOperandsAndRejectsNegativeOnes) {
  EXPECT_EQ(internal::checked_mul("a * b", {3, 5}), 15);
  EXPECT_EQ(internal::checked_mul("a * b * c", {kMax, 1, 1}), kMax);
  EXPECT_EQ(internal::checked_mul("a * 0", {kMax, 0}), 0);
  EXPECT_EQ(internal::checked_add("a + b", {kMax - 1, 1}), kMax);
  std::string msg = invalid_argument_of([] { internal::checked_mul("rows * cols", {k2p58, 576}); });
  EXPECT_HAS(msg, "rows * cols = 288230376151711744 * 576 overflows int64");
  msg = invalid_argument_of([] { internal::checked_add("size + n", {1, kMax}); });
  EXPECT_HAS(msg, "size + n = 1 + 9223372036854775807 overflows int64");
  EXPECT_HAS(invalid_argument_of([] { internal::checked_mul("x", {-1, 2}); }), "non-negative");
  EXPECT_HAS(invalid_argument_of([] { internal::checked_add("x", {2, -1}); }), "non-negative");
  // A negative operand is refused even when a zero would make the product 0.
  EXPECT_HAS(invalid_argument_of([] { internal::checked_mul("x", {0, -1}); }), "non-negative");
  msg = invalid_argument_of([] { internal::checked_elements<float>("buf", {std::int64_t{1} << 62}); });
  EXPECT_HAS(msg, "4611686018427387904 elements of 4 bytes");
}

TEST(CheckedArithmetic, BoundariesAreExact) {
  const std::int64_t two31 = std::int64_t{1} << 31;
  EXPECT_EQ(internal::checked_mul("e", {}), 1);  // empty product
  EXPECT_EQ(internal::checked_add("e", {}), 0);  // empty sum
  EXPECT_EQ(internal::checked_mul("x", {two31, two31}), std::int64_t{1} << 62);
  EXPECT_HAS(invalid_argument_of([&] { internal::checked_mul("x", {two31, two31, 2}); }),
             "2147483648 * 2147483648 * 2 overflows int64 (max 9223372036854775807)");
  // 3 * 3074457345618258602 = INT64_MAX - 1; one more in the second factor is past it.
  EXPECT_EQ(internal::checked_mul("x", {3, kMax / 3}), kMax / 3 * 3);
  EXPECT_HAS(invalid_argument_of([&] { internal::checked_mul("x", {3, kMax / 3 + 1}); }),
             "overflows int64");
  EXPECT_EQ(internal::checked_add("x", {kMax / 2, kMax / 2, 1}), kMax);
  EXPECT_HAS(invalid_argument_of([&] { internal::checked_add("x", {kMax / 2, kMax / 2, 2}); }),
             "overflows int64");
  // Bytes: kMax / 8 doubles fit, one more does not.
  EXPECT_EQ(internal::checked_elements<double>("d", {kMax / 8}), kMax / 8);
  EXPECT_HAS(invalid_argument_of([&] { internal::checked_elements<double>("d", {kMax / 8 + 1}); }),
             "elements of 8 bytes: the byte count overflows int64");
  EXPECT_EQ(internal::checked_elements<char>("c", {kMax}), kMax);
}

}  // namespace
}  // namespace mla
