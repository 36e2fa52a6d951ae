// Asserting on errors by their words: message_of<E>(fn) runs fn and returns the message of the
// exception of type E (or a subclass) it throws, recording a test failure when it throws nothing
// or something else; EXPECT_HAS(msg, word) checks that the message contains the word, and
// expect_throw<E>(fn, {words}) both at once.
#pragma once

#include <gtest/gtest.h>

#include <exception>
#include <stdexcept>
#include <string>
#include <type_traits>
#include <vector>

namespace mla::testing {

template <class E, class Fn>
std::string message_of(Fn&& fn) {
  try {
    fn();
  } catch (const std::exception& e) {
    if constexpr (!std::is_same_v<E, std::exception>) {
      if (dynamic_cast<const E*>(&e) == nullptr) {
        ADD_FAILURE() << "wrong exception type: " << e.what();
        return "";
      }
    }
    return e.what();
  }
  ADD_FAILURE() << "no exception";
  return "";
}

/// message_of<std::invalid_argument>: the type of every argument check (MLA_CHECK_ARG).
template <class Fn>
std::string invalid_argument_of(Fn&& fn) {
  return message_of<std::invalid_argument>(fn);
}

/// Checks that fn throws E (or a subclass) whose message contains every one of `words`.
template <class E, class Fn>
void expect_throw(Fn&& fn, const std::vector<std::string>& words) {
  const std::string msg = message_of<E>(fn);
  for (const std::string& w : words)
    EXPECT_NE(msg.find(w), std::string::npos) << "message lacks '" << w << "': " << msg;
}

}  // namespace mla::testing

#define EXPECT_HAS(msg, word) EXPECT_NE((msg).find(word), std::string::npos) << (msg)
