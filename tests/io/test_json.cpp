// Tests for mla/io/json.hpp: parse_json()'s nesting limit (exact at kMaxJsonDepth, brackets inside
// strings not counted, 200k levels refused without a crash), its duplicate-key modes, syntax and
// NUL-byte errors; parse_json_members() against nlohmann's parse of the whole object and its
// errors; json_excerpt() against nlohmann's own dump() for small values and against its bound for
// deep, long and wide ones.
#include <gtest/gtest.h>

#include <stdexcept>
#include <string>
#include <utility>
#include <vector>

#include "mla/io/json.hpp"

namespace mla {
namespace {

using io::JsonDuplicateKeys;
using io::kJsonExcerptChars;
using io::kMaxJsonDepth;

std::string nested_arrays(int depth, const std::string& inner = "") {
  return std::string(static_cast<std::size_t>(depth), '[') + inner +
         std::string(static_cast<std::size_t>(depth), ']');
}

std::string nested_objects(int depth) {
  std::string s;
  for (int i = 0; i < depth; ++i) s += "{\"k\":";
  s += "1";
  for (int i = 0; i < depth; ++i) s += "}";
  return s;
}

// The message of the std::runtime_error that parse_json(text, "'f.json'", dup) throws.
std::string parse_error(const std::string& text,
                        JsonDuplicateKeys dup = JsonDuplicateKeys::kLastWins) {
  try {
    io::parse_json(text, "'f.json'", dup);
  } catch (const std::runtime_error& e) {
    return e.what();
  }
  return "<accepted>";
}

TEST(ParseJson, NestingLimitIsExact) {
  EXPECT_EQ(io::parse_json(nested_arrays(kMaxJsonDepth), "x").dump(),
            nested_arrays(kMaxJsonDepth));
  EXPECT_EQ(io::parse_json(nested_objects(kMaxJsonDepth), "x").dump(),
            nested_objects(kMaxJsonDepth));
  for (const std::string& text : {nested_arrays(kMaxJsonDepth + 1),
                                  nested_objects(kMaxJsonDepth + 1),
                                  "{\"a\":" + nested_arrays(kMaxJsonDepth) + "}"}) {
    const std::string msg = parse_error(text);
    EXPECT_NE(msg.find("'f.json' is nested deeper than " + std::to_string(kMaxJsonDepth) +
                       " levels"),
              std::string::npos)
        << msg;
  }
}

TEST(ParseJson, BracketsInsideStringsDoNotCount) {
  // A string of 1000 '[' (and an escaped quote before more of them) is one level deep.
  const std::string brackets(1000, '[');
  const nlohmann::json j =
      io::parse_json("[\"" + brackets + "\", \"\\\"" + brackets + "\"]", "x");
  ASSERT_TRUE(j.is_array());
  EXPECT_EQ(j[0].get<std::string>(), brackets);
  EXPECT_EQ(j[1].get<std::string>(), "\"" + brackets);
}

TEST(ParseJson, DeepNestingIsRefusedWithoutRecursion) {
  // 200k levels, balanced or not: refused with the limit named, no stack overflow (the fuzzed
  // config.json of the issue was 400 KB of brackets around a key's value).
  for (const std::string& text :
       {nested_arrays(200000), std::string(200000, '['),
        "{\"hidden_size\": " + nested_arrays(200000) + ", \"num_attention_heads\": 2}"}) {
    EXPECT_NE(parse_error(text).find("nested deeper than"), std::string::npos);
  }
}

TEST(ParseJson, DuplicateKeys) {
  const JsonDuplicateKeys reject = JsonDuplicateKeys::kReject;
  EXPECT_NE(parse_error(R"({"a": 1, "b": 2, "a": 3})", reject).find("'f.json' has duplicate key \"a\""),
            std::string::npos);
  EXPECT_NE(parse_error(R"({"x": {"a": 1, "a": 2}})", reject).find("duplicate key \"a\""),
            std::string::npos);
  // A duplicate after the parent's nested objects closed, and after many keys.
  EXPECT_NE(parse_error(R"({"a": {"b": 1}, "c": [{"a": 1}], "a": 2})", reject).find("\"a\""),
            std::string::npos);
  std::string many = "{";
  for (int i = 0; i < 5000; ++i) many += "\"k" + std::to_string(i) + "\":{\"v\":1},";
  EXPECT_EQ(io::parse_json(many + "\"end\":0}", "x", reject).size(), 5001u);
  EXPECT_NE(parse_error(many + "\"k17\":0}", reject).find("duplicate key \"k17\""),
            std::string::npos);
  // The same key in sibling or nested objects is no duplicate.
  const nlohmann::json ok = io::parse_json(R"({"a": {"a": {"a": 1}}, "b": {"a": 2}})", "x", reject);
  EXPECT_EQ(ok["a"]["a"]["a"], 1);
  EXPECT_EQ(ok["b"]["a"], 2);
  // kLastWins keeps the last value, as nlohmann::json::parse does.
  EXPECT_EQ(io::parse_json(R"({"a": 1, "a": 3})", "x")["a"], 3);
}

TEST(ParseJson, SyntaxErrorsAndNulBytes) {
  for (const char* text : {"", "{", "{\"a\":}", "[1,]", "{} x", "{/*c*/}", "nan", "\"\xff\""}) {
    const std::string msg = parse_error(text);
    EXPECT_EQ(msg.rfind("'f.json' is not valid JSON: ", 0), 0u) << text << ": " << msg;
    for (char c : msg) {
      EXPECT_TRUE(c >= 0x20 && c <= 0x7E) << "unprintable byte in: " << msg;
    }
  }
  // nlohmann's lexer would stop at the NUL and accept "{}".
  EXPECT_NE(parse_error(std::string("{}\0 garbage", 11)).find("'f.json' contains a NUL byte at offset 2"),
            std::string::npos);
}

TEST(ParseJsonMembers, HandsOverEachMemberInFileOrder) {
  std::vector<std::pair<std::string, nlohmann::json>> got;
  const std::string text = R"( {"b": [1, {"x": null}], "a": "s", "c": {"k": {"k": 2.5}}, "d": true} )";
  io::parse_json_members(text.data(), text.size(), "'f.json'",
                         [&](const std::string& k, const nlohmann::json& v) { got.emplace_back(k, v); });
  ASSERT_EQ(got.size(), 4u);
  const nlohmann::json whole = nlohmann::json::parse(text);
  const char* order[] = {"b", "a", "c", "d"};
  for (std::size_t i = 0; i < got.size(); ++i) {
    EXPECT_EQ(got[i].first, order[i]);
    EXPECT_EQ(got[i].second, whole[order[i]]) << order[i];
  }
  int calls = 0;
  io::parse_json_members("{}", 2, "x", [&](const std::string&, const nlohmann::json&) { ++calls; });
  EXPECT_EQ(calls, 0);
}

TEST(ParseJsonMembers, ErrorsMatchParseJson) {
  const auto error = [](const std::string& text) {
    try {
      io::parse_json_members(text.data(), text.size(), "'f.json'",
                             [](const std::string&, const nlohmann::json&) {});
    } catch (const std::runtime_error& e) {
      return std::string(e.what());
    }
    return std::string("<accepted>");
  };
  EXPECT_NE(error("[1,2]").find("'f.json' is not a JSON object: [1,2]"), std::string::npos);
  EXPECT_NE(error("7").find("'f.json' is not a JSON object: 7"), std::string::npos);
  EXPECT_NE(error("[1,").find("'f.json' is not valid JSON"), std::string::npos);
  EXPECT_NE(error(R"({"a": 1, "a": 2})").find("duplicate key \"a\""), std::string::npos);
  EXPECT_NE(error(R"({"a": {"b": 1, "b": 2}})").find("duplicate key \"b\""), std::string::npos);
  EXPECT_NE(error(R"({"a": 1} x)").find("is not valid JSON"), std::string::npos);
  EXPECT_NE(error(std::string("{}\0", 3)).find("NUL byte at offset 2"), std::string::npos);
  // The root is level 1: a member may hold kMaxJsonDepth - 1 more levels.
  EXPECT_EQ(error("{\"a\":" + nested_arrays(kMaxJsonDepth - 1) + "}"), "<accepted>");
  for (const std::string& text : {"{\"a\":" + nested_arrays(kMaxJsonDepth) + "}",
                                  "{\"a\":" + std::string(200000, '[')}) {
    EXPECT_NE(error(text).find("'f.json' is nested deeper than"), std::string::npos);
  }
  // What the callback throws comes out unchanged.
  EXPECT_THROW(io::parse_json_members("{\"a\": 1}", 8, "x",
                                      [](const std::string&, const nlohmann::json&) {
                                        throw std::invalid_argument("from the callback");
                                      }),
               std::invalid_argument);
}

TEST(JsonExcerpt, SmallValuesAreTheirCompactDump) {
  for (const char* text : {"null", "true", "-12", "18446744073709551615", "2.5", "\"tab\\there\"",
                           "[]", "{}", R"({"a":[1,2,{"b":"x\"y"}],"c":null})", "[[[[1]]]]"}) {
    const nlohmann::json v = nlohmann::json::parse(text);
    EXPECT_EQ(io::json_excerpt(v), v.dump()) << text;
  }
}

TEST(JsonExcerpt, BoundedWhateverTheValue) {
  const auto check_cut = [](const nlohmann::json& v, const std::string& prefix) {
    const std::string e = io::json_excerpt(v);
    EXPECT_EQ(e.size(), kJsonExcerptChars);
    EXPECT_EQ(e.substr(e.size() - 3), "...");
    EXPECT_EQ(e.rfind(prefix, 0), 0u) << e;
  };
  // 200k levels deep (nlohmann builds and destroys it without recursion; dump() would not).
  check_cut(nlohmann::json::parse(nested_arrays(200000, "1")), "[[[[[[[[");
  check_cut(nlohmann::json::parse(nested_objects(200000)), "{\"k\":{\"k\":");
  check_cut(nlohmann::json(std::string(10'000'000, 'a')), "\"aaaaaaaa");
  nlohmann::json wide = nlohmann::json::object();
  for (int i = 0; i < 100000; ++i) wide["key" + std::to_string(i)] = i;
  check_cut(wide, "{\"key0\":0,\"key1\":1,");
  // Two-byte characters (U+00E9): the cut never splits one.
  std::string accents;
  for (int i = 0; i < 100; ++i) accents += "\xc3\xa9";
  const std::string e = io::json_excerpt(nlohmann::json(accents), 20);
  EXPECT_LE(e.size(), 20u);
  EXPECT_EQ(e.substr(e.size() - 3), "...");
  EXPECT_NO_THROW(nlohmann::json::parse("\"" + e.substr(1, e.size() - 4) + "\"")) << e;
}

}  // namespace
}  // namespace mla
