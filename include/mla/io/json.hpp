// Reading JSON that comes from files (config.json, model.safetensors.index.json, safetensors
// headers) so that the input cannot choose the stack depth or the size of an error message.
//
// nlohmann::json parses, builds and destroys a value without recursion (3.7.3 and later), but
// dump(), copies and comparisons recurse once per nesting level: a value nested 200k deep
// overflows the stack the first time an error message serialises it. Hence two rules for
// everything under mla/io:
//   - parse_json() rejects nesting deeper than kMaxJsonDepth while it builds the DOM, before the
//     container that would be too deep exists (a SAX parse: linear in the text, no recursion),
//     so every value the loaders hold is at most kMaxJsonDepth levels deep;
//   - error messages quote a value through json_excerpt(), which writes at most kJsonExcerptChars
//     characters and recurses at most that many levels, whatever the value (a caller may hand
//     parse_attention_config() a DOM it built itself, of any depth or size).
// Errors are std::runtime_error (the text is data from a file), naming the file or field, the
// limit and what was found.
#pragma once

#include <cstddef>
#include <cstring>
#include <set>
#include <string>
#include <utility>
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

namespace detail {

// The SAX handler of parse_json(): builds the DOM as nlohmann's own parser does (a stack of the
// open containers, the object slot the next value goes to), refusing a container that would be
// level max_depth + 1 before creating it and, on request, a key its object already has (one map
// look-up per key). Returning false stops the parser at once.
class JsonBuilder {
 public:
  using json = nlohmann::json;
  enum Error { kNone, kSyntax, kTooDeep, kDuplicate };

  explicit JsonBuilder(JsonDuplicateKeys dup, int max_depth = kMaxJsonDepth)
      : reject_duplicates_(dup == JsonDuplicateKeys::kReject), max_depth_(max_depth) {}

  bool null() { return put(nullptr) != nullptr; }
  bool boolean(bool v) { return put(v) != nullptr; }
  bool number_integer(json::number_integer_t v) { return put(v) != nullptr; }
  bool number_unsigned(json::number_unsigned_t v) { return put(v) != nullptr; }
  bool number_float(json::number_float_t v, const json::string_t&) { return put(v) != nullptr; }
  bool string(json::string_t& v) { return put(std::move(v)) != nullptr; }
  bool binary(json::binary_t& v) { return put(json::binary(std::move(v))) != nullptr; }
  bool start_object(std::size_t) { return open(json::value_t::object); }
  bool start_array(std::size_t) { return open(json::value_t::array); }
  bool end_object() { return close(); }
  bool end_array() { return close(); }
  bool key(json::string_t& k) {
    auto r = stack_.back()->get_ref<json::object_t&>().emplace(k, nullptr);
    if (!r.second && reject_duplicates_) {
      error_ = kDuplicate;
      duplicate_ = k;
      return false;
    }
    slot_ = &r.first->second;  // a repeated key (kLastWins) is overwritten by its new value
    return true;
  }
  bool parse_error(std::size_t, const std::string&, const nlohmann::detail::exception& e) {
    error_ = kSyntax;
    syntax_message_ = e.what();
    return false;
  }
  // Ready for the next value (keeps the stack's capacity).
  void reset() {
    root_ = json();
    stack_.clear();
    slot_ = nullptr;
  }

  json root_;
  Error error_ = kNone;
  std::string syntax_message_;
  std::string duplicate_;

 private:
  // Stores v where the next value goes (the root, the end of the open array, or the slot of the
  // last key) and returns its address.
  template <class V>
  json* put(V&& v) {
    if (stack_.empty()) {
      root_ = json(std::forward<V>(v));
      return &root_;
    }
    json& top = *stack_.back();
    if (top.is_array()) {
      json::array_t& a = top.get_ref<json::array_t&>();
      a.emplace_back(std::forward<V>(v));
      return &a.back();
    }
    *slot_ = json(std::forward<V>(v));
    return slot_;
  }
  bool open(json::value_t type) {
    if (stack_.size() == static_cast<std::size_t>(max_depth_)) {
      error_ = kTooDeep;
      return false;
    }
    stack_.push_back(put(type));
    return true;
  }
  bool close() {
    stack_.pop_back();
    return true;
  }

  bool reject_duplicates_;
  int max_depth_;
  std::vector<json*> stack_;  // the open containers, outermost first
  json* slot_ = nullptr;      // the value of the last key of the innermost open object
};

// The SAX handler of parse_json_members(): the root must be an object; each member's value is
// built by a JsonBuilder (one level less deep, the root taking one) and handed to on_member as
// soon as it is complete, then dropped. Top-level keys are checked for duplicates in a set.
template <class OnMember>
class JsonMemberStream {
 public:
  using json = nlohmann::json;
  explicit JsonMemberStream(OnMember& on_member) : on_member_(on_member) {}

  bool null() { return scalar([&] { return value_.null(); }); }
  bool boolean(bool v) { return scalar([&] { return value_.boolean(v); }); }
  bool number_integer(json::number_integer_t v) { return scalar([&] { return value_.number_integer(v); }); }
  bool number_unsigned(json::number_unsigned_t v) { return scalar([&] { return value_.number_unsigned(v); }); }
  bool number_float(json::number_float_t v, const json::string_t& s) {
    return scalar([&] { return value_.number_float(v, s); });
  }
  bool string(json::string_t& v) { return scalar([&] { return value_.string(v); }); }
  bool binary(json::binary_t& v) { return scalar([&] { return value_.binary(v); }); }
  bool start_object(std::size_t n) {
    if (depth_++ == 0) return true;  // the root
    return value_.start_object(n) || fail(value_.error_);
  }
  bool start_array(std::size_t n) {
    if (depth_ == 0) return fail(kNotObject);
    ++depth_;
    return value_.start_array(n) || fail(value_.error_);
  }
  bool end_object() { return end([&] { return value_.end_object(); }); }
  bool end_array() { return end([&] { return value_.end_array(); }); }
  bool key(json::string_t& k) {
    if (depth_ > 1) return value_.key(k) || fail(value_.error_);
    if (!keys_.insert(k).second) {
      duplicate_ = k;
      return fail(JsonBuilder::kDuplicate);
    }
    key_ = std::move(k);
    value_.reset();
    return true;
  }
  bool parse_error(std::size_t, const std::string&, const nlohmann::detail::exception& e) {
    syntax_message_ = e.what();
    return fail(JsonBuilder::kSyntax);
  }

  static constexpr int kNotObject = JsonBuilder::kDuplicate + 1;
  int error_ = JsonBuilder::kNone;
  std::string syntax_message_;
  std::string duplicate_;

 private:
  bool fail(int error) {
    error_ = error;
    if (error == JsonBuilder::kDuplicate && duplicate_.empty()) duplicate_ = value_.duplicate_;
    return false;
  }
  template <class F>
  bool scalar(F add) {
    if (depth_ == 0) return fail(kNotObject);
    if (!add()) return fail(value_.error_);
    return depth_ > 1 || finish();
  }
  template <class F>
  bool end(F close) {
    if (--depth_ == 0) return true;  // the root closed
    if (!close()) return fail(value_.error_);
    return depth_ > 1 || finish();
  }
  bool finish() {
    on_member_(static_cast<const std::string&>(key_), static_cast<const json&>(value_.root_));
    return true;
  }

  OnMember& on_member_;
  int depth_ = 0;  // open containers, the root included
  JsonBuilder value_{JsonDuplicateKeys::kReject, kMaxJsonDepth - 1};  // the root is level 1
  std::string key_;
  std::set<std::string> keys_;
};

// Throws the message for a failed parse: JsonBuilder::Error (kNotObject is the caller's to word).
[[noreturn]] inline void throw_json_error(const std::string& what, int error,
                                          const std::string& syntax_message,
                                          const std::string& duplicate) {
  switch (error) {
    case JsonBuilder::kTooDeep:
      throw std::runtime_error(internal::str_cat(
          what, " is nested deeper than ", kMaxJsonDepth,
          " levels of JSON arrays/objects (the limit mla::io::kMaxJsonDepth)"));
    case JsonBuilder::kDuplicate:
      throw std::runtime_error(internal::str_cat(
          what, " has duplicate key ", json_excerpt(nlohmann::json(duplicate))));
    default:
      break;
  }
  // The parser quotes the offending input, which may be binary: keep the message printable.
  std::string msg = syntax_message.empty() ? "rejected by the parser" : syntax_message;
  for (char& ch : msg) {
    if (static_cast<unsigned char>(ch) < 0x20 || static_cast<unsigned char>(ch) > 0x7E) ch = '?';
  }
  throw std::runtime_error(internal::str_cat(what, " is not valid JSON: ", msg));
}

inline void check_no_nul(const char* text, std::size_t size, const std::string& what) {
  if (const void* z = std::memchr(text, 0, size)) {
    throw std::runtime_error(internal::str_cat(what, " contains a NUL byte at offset ",
                                               static_cast<const char*>(z) - text));
  }
}

}  // namespace detail

/// Parses `text` as one JSON value; `what` names it in messages ("'config.json'", "safetensors
/// file 'x': header"). Throws std::runtime_error "<what> is not valid JSON: ...", "<what> is
/// nested deeper than 64 levels ...", "<what> has duplicate key ..." (kReject) or "<what> contains
/// a NUL byte at offset N" (nlohmann's lexer would take a NUL for the end of the input and
/// silently ignore what follows; a raw NUL is never valid JSON). One pass, linear in the text:
/// the checks run while the DOM is built, and a container too deep is refused before it exists.
inline nlohmann::json parse_json(const char* text, std::size_t size, const std::string& what,
                                 JsonDuplicateKeys duplicates = JsonDuplicateKeys::kLastWins) {
  detail::check_no_nul(text, size, what);
  detail::JsonBuilder builder(duplicates);
  if (nlohmann::json::sax_parse(text, text + size, &builder)) return std::move(builder.root_);
  detail::throw_json_error(what, builder.error_, builder.syntax_message_, builder.duplicate_);
}

inline nlohmann::json parse_json(const std::string& text, const std::string& what,
                                 JsonDuplicateKeys duplicates = JsonDuplicateKeys::kLastWins) {
  return parse_json(text.data(), text.size(), what, duplicates);
}

/// Parses `text`, which must hold one JSON object, and calls on_member(const std::string& key,
/// const nlohmann::json& value) for each member in file order as soon as its value is complete;
/// each value is built, handed over and dropped before the next one, so a header of n entries
/// never exists as one DOM (whose build and teardown cost more than the parse). Duplicate keys
/// are refused at every level; the errors are parse_json()'s, plus "<what> is not a JSON object:
/// <excerpt>". on_member may throw; members before a syntax error further on have been handed
/// over by then.
template <class OnMember>
void parse_json_members(const char* text, std::size_t size, const std::string& what,
                        OnMember on_member) {
  detail::check_no_nul(text, size, what);
  detail::JsonMemberStream<OnMember> stream(on_member);
  if (nlohmann::json::sax_parse(text, text + size, &stream)) return;
  if (stream.error_ == stream.kNotObject) {
    // Parse it whole (throws if it is not valid JSON) for the excerpt.
    const nlohmann::json root = parse_json(text, size, what, JsonDuplicateKeys::kReject);
    throw std::runtime_error(internal::str_cat(what, " is not a JSON object: ", json_excerpt(root)));
  }
  detail::throw_json_error(what, stream.error_, stream.syntax_message_, stream.duplicate_);
}

}  // namespace mla::io
