// Reading JSON that comes from files (config.json, model.safetensors.index.json, safetensors
// headers) so that the input cannot choose the stack depth or the size of an error message.
//
// nlohmann::json builds and parses without recursion, but dump(), copies and comparisons of a
// value recurse once per nesting level: a value nested 200k deep overflows the stack the first
// time an error message serialises it. Hence two rules for everything under mla/io:
//   - parse_json() rejects nesting deeper than kMaxJsonDepth before any DOM is built (a SAX pass
//     over the text, linear in its length and without recursion), so every value the loaders
//     hold is at most kMaxJsonDepth levels deep;
//   - error messages quote a value through json_excerpt(), which writes at most kJsonExcerptChars
//     characters and recurses at most that many levels, whatever the value (a caller may hand
//     parse_attention_config() a DOM it built itself, of any depth or size).
// Errors are std::runtime_error (the text is data from a file), naming the file or field, the
// limit and what was found.
#pragma once

#include <cstddef>
#include <cstring>
#include <string>
#include <unordered_set>
#include <vector>

#include <nlohmann/json.hpp>

#include "mla/core/check.hpp"

namespace mla::io {

/// Deepest nesting of JSON arrays and objects that parse_json() accepts: the outermost container
/// is level 1, so `{"a": [1]}` is 2 levels deep. A safetensors header needs 3 (header object,
/// tensor entry, shape list), a Hugging Face config.json about 4 (e.g. quantization_config with a
/// list of module names, or text_config.rope_scaling.mrope_section); 64 leaves room for any real
/// file and keeps every recursive operation on a loaded value shallow.
inline constexpr int kMaxJsonDepth = 64;

/// Most characters of a JSON value that an error message quotes (json_excerpt()); a longer value
/// is cut and ends in "...".
inline constexpr std::size_t kJsonExcerptChars = 64;

/// What parse_json() does with an object that has the same key twice.
enum class JsonDuplicateKeys {
  kLastWins,  ///< keep the last value, as nlohmann::json and Python's json module do
  kReject,    ///< throw: the file is ambiguous (the safetensors format forbids duplicates)
};

namespace detail {

// Appends `s` as a JSON string literal, at most about `budget` bytes of it (invalid or cut UTF-8
// becomes U+FFFD).
inline void append_json_string(const std::string& s, std::size_t budget, std::string& out) {
  const nlohmann::json part = s.size() > budget ? s.substr(0, budget) : s;
  out += part.dump(-1, ' ', false, nlohmann::json::error_handler_t::replace);
}

// Compact JSON of v appended to out until out holds `stop` bytes. Every level appends a byte
// before it descends, so the recursion is at most `stop` levels deep.
inline void append_json_excerpt(const nlohmann::json& v, std::size_t stop, std::string& out) {
  if (out.size() >= stop) return;
  if (v.is_object() || v.is_array()) {
    const bool object = v.is_object();
    out += object ? '{' : '[';
    bool first = true;
    for (auto it = v.begin(); it != v.end() && out.size() < stop; ++it) {
      if (!first) out += ',';
      first = false;
      if (object) {
        append_json_string(it.key(), stop - out.size(), out);
        out += ':';
      }
      append_json_excerpt(*it, stop, out);
    }
    out += object ? '}' : ']';
  } else if (v.is_string()) {
    append_json_string(v.get_ref<const std::string&>(), stop - out.size(), out);
  } else {
    out += v.dump();  // a number, true/false, null: a few bytes
  }
}

// The SAX pass of parse_json(): counts the nesting depth and, on request, the keys of every open
// object. Returning false stops the parser at once.
class JsonChecker {
 public:
  using json = nlohmann::json;
  explicit JsonChecker(JsonDuplicateKeys dup) : reject_duplicates_(dup == JsonDuplicateKeys::kReject) {}

  bool null() { return true; }
  bool boolean(bool) { return true; }
  bool number_integer(json::number_integer_t) { return true; }
  bool number_unsigned(json::number_unsigned_t) { return true; }
  bool number_float(json::number_float_t, const json::string_t&) { return true; }
  bool string(json::string_t&) { return true; }
  bool binary(json::binary_t&) { return true; }
  bool start_object(std::size_t) { return open(true); }
  bool end_object() { return close(); }
  bool start_array(std::size_t) { return open(false); }
  bool end_array() { return close(); }
  bool key(json::string_t& k) {
    if (reject_duplicates_ && !keys_[static_cast<std::size_t>(depth_ - 1)].insert(k).second) {
      error_ = kDuplicate;
      duplicate_ = k;
      return false;
    }
    return true;
  }
  bool parse_error(std::size_t, const std::string&, const nlohmann::detail::exception& e) {
    error_ = kSyntax;
    syntax_message_ = e.what();
    return false;
  }

  enum Error { kNone, kSyntax, kTooDeep, kDuplicate };
  Error error_ = kNone;
  std::string syntax_message_;
  std::string duplicate_;

 private:
  bool open(bool object) {
    if (depth_ == kMaxJsonDepth) {
      error_ = kTooDeep;
      return false;
    }
    ++depth_;
    // keys_[d - 1] holds the keys of the object open at level d (one set per level, reused).
    if (reject_duplicates_ && object) {
      if (keys_.size() < static_cast<std::size_t>(depth_)) keys_.resize(static_cast<std::size_t>(depth_));
      keys_[static_cast<std::size_t>(depth_ - 1)].clear();
    }
    return true;
  }
  bool close() {
    --depth_;
    return true;
  }

  bool reject_duplicates_;
  int depth_ = 0;
  std::vector<std::unordered_set<std::string>> keys_;
};

}  // namespace detail

/// `v` as compact JSON, cut to at most `max_chars` characters (the last three "..." when cut, never
/// inside a UTF-8 sequence). Costs O(max_chars) time and stack whatever the size or depth of `v`.
inline std::string json_excerpt(const nlohmann::json& v, std::size_t max_chars = kJsonExcerptChars) {
  if (max_chars < 4) max_chars = 4;
  std::string out;
  detail::append_json_excerpt(v, max_chars + 1, out);
  if (out.size() <= max_chars) return out;
  std::size_t cut = max_chars - 3;
  while (cut > 0 && (static_cast<unsigned char>(out[cut]) & 0xC0) == 0x80) --cut;  // continuation byte
  out.resize(cut);
  return out + "...";
}

/// Parses `text` as one JSON value; `what` names it in messages ("'config.json'", "safetensors
/// file 'x': header"). Throws std::runtime_error "<what> is not valid JSON: ...", "<what> is
/// nested deeper than 64 levels ...", "<what> has duplicate key ..." (kReject) or "<what> contains
/// a NUL byte at offset N" (nlohmann's lexer would take a NUL for the end of the input and
/// silently ignore what follows; a raw NUL is never valid JSON). Nesting and duplicates are
/// checked in a first SAX pass, the DOM is built in a second one, both linear in text.size().
inline nlohmann::json parse_json(const std::string& text, const std::string& what,
                                 JsonDuplicateKeys duplicates = JsonDuplicateKeys::kLastWins) {
  const char* begin = text.data();
  const char* end = begin + text.size();
  if (const void* z = std::memchr(begin, 0, text.size())) {
    throw std::runtime_error(internal::str_cat(what, " contains a NUL byte at offset ",
                                               static_cast<const char*>(z) - begin));
  }
  // The parser quotes the offending input, which may be binary: keep the message printable.
  const auto syntax_error = [&](std::string msg) {
    for (char& ch : msg) {
      if (static_cast<unsigned char>(ch) < 0x20 || static_cast<unsigned char>(ch) > 0x7E) ch = '?';
    }
    return std::runtime_error(internal::str_cat(what, " is not valid JSON: ", msg));
  };
  detail::JsonChecker check(duplicates);
  if (!nlohmann::json::sax_parse(begin, end, &check)) {
    switch (check.error_) {
      case detail::JsonChecker::kTooDeep:
        throw std::runtime_error(internal::str_cat(
            what, " is nested deeper than ", kMaxJsonDepth,
            " levels of JSON arrays/objects (the limit mla::io::kMaxJsonDepth)"));
      case detail::JsonChecker::kDuplicate:
        throw std::runtime_error(internal::str_cat(what, " has duplicate key ",
                                                   json_excerpt(nlohmann::json(check.duplicate_))));
      case detail::JsonChecker::kSyntax:
        throw syntax_error(check.syntax_message_);
      case detail::JsonChecker::kNone:
        break;
    }
    throw syntax_error("rejected by the parser");
  }
  try {
    return nlohmann::json::parse(begin, end);
  } catch (const nlohmann::json::exception& e) {  // not expected after the SAX pass accepted it
    throw syntax_error(e.what());
  }
}

}  // namespace mla::io
