// Tests for mla/io/safetensors.hpp and mla/io/fp8.hpp: the writer round trip, every dtype
// conversion against values worked out by hand or by ldexp formulas written from the format
// definitions, one malformed file per header rule, FP8 block dequantisation, and the real reference
// files (expected values from shared/reference/README.md). The scalar decoders themselves:
// tests/core/test_fp8.cpp.
#include <cmath>
#include <cstdint>
#include <cstdlib>
#include <filesystem>
#include <functional>
#include <limits>
#include <random>
#include <string>
#include <thread>
#include <vector>

#include <gtest/gtest.h>

#include "mla/io/fp8.hpp"
#include "mla/io/json.hpp"
#include "mla/io/safetensors.hpp"
#include "support/error_message.hpp"
#include "support/reference_dir.hpp"
#include "support/float_formats.hpp"

namespace {

namespace fs = std::filesystem;
using mla::io::Dtype;
using mla::io::SafetensorsFile;
using mla::io::SafetensorsWriter;

using mla::testing::expect_throw;

// A file image with an arbitrary header text and `data_bytes` zero bytes of data.
std::vector<std::uint8_t> raw_file(const std::string& header, std::size_t data_bytes = 0) {
  std::vector<std::uint8_t> out(8 + header.size() + data_bytes, 0);
  const std::uint64_t n = header.size();
  for (int i = 0; i < 8; ++i) out[i] = static_cast<std::uint8_t>(n >> (8 * i));
  std::copy(header.begin(), header.end(), out.begin() + 8);
  return out;
}

// A file image whose length field says `n` whatever follows.
std::vector<std::uint8_t> with_length(std::uint64_t n, std::size_t tail_bytes) {
  std::vector<std::uint8_t> out(8 + tail_bytes, ' ');
  for (int i = 0; i < 8; ++i) out[i] = static_cast<std::uint8_t>(n >> (8 * i));
  return out;
}

std::vector<std::uint8_t> u16_bytes(const std::vector<std::uint16_t>& v) {
  std::vector<std::uint8_t> out;
  for (std::uint16_t x : v) {
    out.push_back(static_cast<std::uint8_t>(x & 0xFF));
    out.push_back(static_cast<std::uint8_t>(x >> 8));
  }
  return out;
}

struct TempDir {
  fs::path path;
  TempDir() {
    path = fs::temp_directory_path() /
           ("mla_test_safetensors_" + std::to_string(std::random_device{}()));
    fs::create_directories(path);
  }
  ~TempDir() {
    std::error_code ec;
    fs::remove_all(path, ec);
  }
};

using mla::testing::ref_e4m3;
using mla::testing::ref_e5m2;

using mla::testing::reference_dir;

// ---------------------------------------------------------------------------------------------
// Writer round trip and conversions

TEST(Safetensors, WriterRoundTripAllTypes) {
  const std::vector<float> f = {1.5f, -2.0f, 3.25f, 0.0f, 1e-3f, 7.0f};
  const std::vector<double> d = {0.1, -1e300, 2.5};
  const std::vector<std::int64_t> i64 = {-1, 1LL << 40, std::numeric_limits<std::int64_t>::max()};
  const std::vector<std::int32_t> i32 = {-7, 8};
  const std::vector<std::uint8_t> u8 = {0, 255};
  const std::vector<Eigen::bfloat16> bf = {Eigen::bfloat16(3.14159265f), Eigen::bfloat16(-2.5f)};
  const std::vector<Eigen::half> hf = {Eigen::half(1.0f), Eigen::half(65504.0f)};
  SafetensorsWriter w;
  w.add("f", {2, 3}, f).add("d", {3}, d).add("i64", {3}, i64).add("i32", {2, 1}, i32);
  w.add("u8", {2}, u8).add("bf", {2}, bf).add("hf", {2}, hf).add_scalar("s", 0.5);
  w.add("empty", {0, 4}, std::vector<float>{});
  w.set_metadata("format", "pt").set_metadata("note", "hello");
  const std::vector<std::uint8_t> bytes = w.to_bytes();

  std::uint64_t n = 0;
  for (int i = 7; i >= 0; --i) n = (n << 8) | bytes[i];
  EXPECT_EQ(n % 8, 0u) << "header padded to 8 bytes";
  EXPECT_EQ(bytes[8], '{');

  const SafetensorsFile file = SafetensorsFile::from_bytes(bytes, "roundtrip");
  EXPECT_EQ(file.size(), 9u);
  EXPECT_EQ(file.names(), (std::vector<std::string>{"bf", "d", "empty", "f", "hf", "i32", "i64", "s", "u8"}));
  EXPECT_EQ(file.metadata().at("format"), "pt");
  EXPECT_EQ(file.metadata().at("note"), "hello");
  EXPECT_EQ(file.data_offset(), 8 + n);

  EXPECT_EQ(file.info("f").dtype, Dtype::kF32);
  EXPECT_EQ(file.info("f").shape, (std::vector<std::int64_t>{2, 3}));
  EXPECT_EQ(file.info("f").begin, 0u);  // added first, so laid out first
  EXPECT_EQ(file.info("f").nbytes(), 24u);
  EXPECT_EQ(file.info("d").begin, 24u);
  EXPECT_EQ(file.info("bf").dtype, Dtype::kBF16);
  EXPECT_EQ(file.info("hf").dtype, Dtype::kF16);
  EXPECT_EQ(file.info("s").shape.size(), 0u);
  EXPECT_EQ(file.info("s").numel(), 1);
  EXPECT_EQ(file.info("empty").numel(), 0);

  EXPECT_EQ(file.read<float>("f"), f);
  EXPECT_EQ(file.read<double>("d"), d);
  EXPECT_EQ(file.read<std::int64_t>("i64"), i64);
  EXPECT_EQ(file.read<std::int32_t>("i32"), i32);
  EXPECT_EQ(file.read<std::uint8_t>("u8"), u8);
  EXPECT_EQ(file.read_scalar<double>("s"), 0.5);
  EXPECT_TRUE(file.read<float>("empty").empty());
  EXPECT_EQ(file.read_matrix<float>("empty", 0, 4).rows(), 0);

  // bf16 of pi is 0x4049 (pi = 0x40490FDB in float32; the dropped half is below the tie).
  const std::vector<std::uint8_t> bf_raw = file.read_bytes("bf");
  EXPECT_EQ(bf_raw, (std::vector<std::uint8_t>{0x49, 0x40, 0x20, 0xC0}));
  EXPECT_EQ(file.read<float>("bf"), (std::vector<float>{3.140625f, -2.5f}));
  EXPECT_EQ(file.read_bytes("hf"), (std::vector<std::uint8_t>{0x00, 0x3C, 0xFF, 0x7B}));
  EXPECT_EQ(file.read<double>("hf"), (std::vector<double>{1.0, 65504.0}));
  EXPECT_EQ(file.read<double>("i64")[1], 1099511627776.0);
  EXPECT_EQ(file.read<float>("u8")[1], 255.0f);
}

TEST(Safetensors, HalfDtypesFromRawBits) {
  const std::vector<std::uint16_t> f16 = {0x3C00, 0xC100, 0x7BFF, 0x0001, 0x03FF, 0x8000};
  const std::vector<std::uint16_t> bf16 = {0x4049, 0x3F80, 0xC020, 0x0001, 0x7F7F};
  SafetensorsWriter w;
  const auto fb = u16_bytes(f16), bb = u16_bytes(bf16);
  w.add_raw("h", Dtype::kF16, {6}, fb.data(), fb.size());
  w.add_raw("b", Dtype::kBF16, {5}, bb.data(), bb.size());
  const SafetensorsFile file = SafetensorsFile::from_bytes(w.to_bytes());
  const std::vector<double> h = file.read<double>("h");
  EXPECT_EQ(h, (std::vector<double>{1.0, -2.5, 65504.0, 5.9604644775390625e-08, 6.097555160522461e-05, -0.0}));
  EXPECT_TRUE(std::signbit(h[5]));
  const std::vector<float> b = file.read<float>("b");
  EXPECT_EQ(b, (std::vector<float>{3.140625f, 1.0f, -2.5f, 9.183549615799121e-41f, 3.3895313892515355e+38f}));
  // Same-type reads keep the bits.
  const std::vector<Eigen::half> hh = file.read<Eigen::half>("h");
  EXPECT_EQ(Eigen::numext::bit_cast<std::uint16_t>(hh[3]), 0x0001);
  const std::vector<Eigen::bfloat16> bb2 = file.read<Eigen::bfloat16>("b");
  EXPECT_EQ(Eigen::numext::bit_cast<std::uint16_t>(bb2[0]), 0x4049);
  // F16 -> bf16 crosses formats: 65504 = 0x477FE0 in float, rounds to bf16 0x4780 (65536).
  EXPECT_EQ(Eigen::numext::bit_cast<std::uint16_t>(file.read<Eigen::bfloat16>("h")[2]), 0x4780);
}

TEST(Safetensors, FloatToBfloat16RoundsToNearestEven) {
  // 1 + 2^-8 is halfway between bf16 1.0 and 1 + 2^-7: ties to even gives 1.0.
  // 1 + 3*2^-8 is halfway between 1 + 2^-7 and 1 + 2^-6: even is 1 + 2^-6 (0x3F82).
  // 1 + 2^-8 + 2^-20 is above the tie: rounds up to 1 + 2^-7 (0x3F81).
  const std::vector<float> v = {1.0f + 0x1p-8f, 1.0f + 3 * 0x1p-8f, 1.0f + 0x1p-8f + 0x1p-20f};
  const SafetensorsFile file = SafetensorsFile::from_bytes(SafetensorsWriter().add("v", {3}, v).to_bytes());
  const std::vector<Eigen::bfloat16> b = file.read<Eigen::bfloat16>("v");
  EXPECT_EQ(Eigen::numext::bit_cast<std::uint16_t>(b[0]), 0x3F80);
  EXPECT_EQ(Eigen::numext::bit_cast<std::uint16_t>(b[1]), 0x3F82);
  EXPECT_EQ(Eigen::numext::bit_cast<std::uint16_t>(b[2]), 0x3F81);
  EXPECT_EQ(file.read<double>("v")[2], 1.0 + std::ldexp(1.0, -8) + std::ldexp(1.0, -20));
}

TEST(Safetensors, IntegerConversionsAreRangeChecked) {
  SafetensorsWriter w;
  w.add("i64", {3}, std::vector<std::int64_t>{-1, 1LL << 40, 5});
  w.add("u64", {1}, std::vector<std::uint64_t>{1ULL << 63});
  w.add("i8", {2}, std::vector<std::int8_t>{-128, 127});
  const std::vector<std::uint8_t> flags = {0, 1, 2};
  w.add_raw("flags", Dtype::kBool, {3}, flags.data(), flags.size());
  w.add("f", {1}, std::vector<float>{1.0f});
  const SafetensorsFile file = SafetensorsFile::from_bytes(w.to_bytes(), "ints.safetensors");

  EXPECT_EQ(file.read<std::int64_t>("i64"), (std::vector<std::int64_t>{-1, 1LL << 40, 5}));
  EXPECT_EQ(file.read<double>("i64"), (std::vector<double>{-1.0, 1099511627776.0, 5.0}));
  expect_throw<std::runtime_error>([&] { file.read<std::int32_t>("i64"); },
                                   {"ints.safetensors", "'i64'", "element 1", "1099511627776", "32-bit"});
  expect_throw<std::runtime_error>([&] { file.read<std::uint64_t>("i64"); }, {"element 0", "-1", "unsigned"});
  EXPECT_EQ(file.read<std::uint64_t>("u64")[0], 1ULL << 63);
  expect_throw<std::runtime_error>([&] { file.read<std::int64_t>("u64"); }, {"9223372036854775808"});
  EXPECT_EQ(file.read<std::int16_t>("i8"), (std::vector<std::int16_t>{-128, 127}));
  expect_throw<std::runtime_error>([&] { file.read<std::uint8_t>("i8"); }, {"element 0", "-128"});
  EXPECT_EQ(file.read<int>("flags"), (std::vector<int>{0, 1, 1}));
  EXPECT_EQ(file.read<float>("flags"), (std::vector<float>{0.0f, 1.0f, 1.0f}));
  EXPECT_EQ(file.read_vector<std::int64_t>("i64", 3)(1), 1LL << 40);
  expect_throw<std::runtime_error>([&] { file.read<std::int64_t>("f"); }, {"'f'", "F32", "integer"});
}

TEST(Safetensors, ShapeChecksAndMissingTensors) {
  mla::Matrix<double> m(3, 4);
  for (int i = 0; i < 3; ++i)
    for (int j = 0; j < 4; ++j) m(i, j) = 10 * i + j;
  SafetensorsWriter w;
  w.add_eigen("w", m).add("one", {1}, std::vector<float>{2.0f}).add_scalar("s", 4.0f);
  w.add_eigen("v", mla::Vector<float>::LinSpaced(5, 0.0f, 4.0f));
  const SafetensorsFile file = SafetensorsFile::from_bytes(w.to_bytes());

  EXPECT_EQ(file.info("w").shape, (std::vector<std::int64_t>{3, 4}));
  EXPECT_EQ(file.info("v").shape, (std::vector<std::int64_t>{5}));
  const mla::Matrix<float> mf = file.read_matrix<float>("w", 3, 4);
  EXPECT_EQ(mf(2, 3), 23.0f);
  EXPECT_EQ(mf(1, 0), 10.0f);  // row-major as stored
  EXPECT_TRUE(file.read_matrix<double>("w", 3, 4) == m);
  EXPECT_EQ(file.read_vector<double>("v", 5)(4), 4.0);
  EXPECT_EQ(file.read_scalar<double>("s"), 4.0);
  EXPECT_EQ(file.read<double>("w", {3, 4})[5], 11.0);

  expect_throw<std::runtime_error>([&] { file.read_matrix<float>("w", 4, 3); },
                                   {"tensor 'w' in '<memory>': expected shape [4, 3], file has [3, 4]"});
  expect_throw<std::runtime_error>([&] { file.read_vector<float>("w", 12); },
                                   {"expected shape [12], file has [3, 4]"});
  expect_throw<std::runtime_error>([&] { file.read_scalar<float>("one"); },
                                   {"'one'", "expected shape [], file has [1]"});
  expect_throw<std::runtime_error>([&] { file.read_vector<float>("s", 1); },
                                   {"expected shape [1], file has []"});
  expect_throw<std::runtime_error>([&] { file.read<float>("w", {3, 4, 1}); },
                                   {"expected shape [3, 4, 1], file has [3, 4]"});
  expect_throw<std::invalid_argument>([&] { file.read_matrix<float>("w", -3, 4); }, {"negative"});
  expect_throw<std::runtime_error>([&] { file.read<float>("nope"); },
                                   {"tensor 'nope' not found", "<memory>"});
  expect_throw<std::runtime_error>([&] { file.read_matrix<float>("nope", 1, 1); }, {"'nope'"});
  expect_throw<std::runtime_error>([&] { file.info("W"); }, {"'W'"});  // case-sensitive
  EXPECT_FALSE(file.contains("nope"));
  EXPECT_TRUE(file.contains("w"));
}

TEST(Safetensors, WriterRejectsInconsistentInput) {
  SafetensorsWriter w;
  w.add("a", {2}, std::vector<float>{1, 2});
  expect_throw<std::invalid_argument>([&] { w.add("a", {1}, std::vector<float>{1}); }, {"'a'", "twice"});
  expect_throw<std::invalid_argument>([&] { w.add("b", {3}, std::vector<float>{1, 2}); }, {"'b'", "3", "2"});
  expect_throw<std::invalid_argument>([&] { w.add("__metadata__", {1}, std::vector<float>{1}); },
                                      {"__metadata__"});
  const std::uint8_t raw[3] = {1, 2, 3};
  expect_throw<std::invalid_argument>([&] { w.add_raw("c", Dtype::kF16, {2}, raw, 3); }, {"'c'", "4 bytes"});
}

// ---------------------------------------------------------------------------------------------
// Malformed files: each must give std::runtime_error naming the problem and the file.

struct BadCase {
  std::string what;
  std::vector<std::uint8_t> bytes;
  std::vector<std::string> words;
};

std::string entry(const std::string& name, const std::string& dtype, const std::string& shape,
                  const std::string& offsets) {
  return "\"" + name + "\":{\"dtype\":" + dtype + ",\"shape\":" + shape + ",\"data_offsets\":" + offsets + "}";
}

TEST(Safetensors, MalformedFilesThrowClearErrors) {
  const std::string a_ok = entry("a", "\"F32\"", "[2]", "[0,8]");
  // kMaxJsonDepth + 1 levels: the header object, the entry, then kMaxJsonDepth - 1 lists.
  const std::string deep = "{\"x\":{\"dtype\":\"U8\",\"shape\":[],\"data_offsets\":[0,1],\"extra\":" +
                           std::string(mla::io::kMaxJsonDepth - 1, '[') +
                           std::string(mla::io::kMaxJsonDepth - 1, ']') + "}}";
  // 200k levels inside an entry (400 KB): refused, no stack overflow.
  const std::string very_deep = "{\"x\":{\"dtype\":\"U8\",\"shape\":[],\"data_offsets\":[0,1],\"extra\":" +
                                std::string(200000, '[') + std::string(200000, ']') + "}}";
  // A huge bad value is quoted in a few dozen characters.
  std::string long_shape = "[\"";
  long_shape += std::string(100000, 'x') + "\"]";
  std::vector<std::uint8_t> nul = raw_file("{}", 0);
  nul.insert(nul.begin() + 8 + 2, '\0');
  nul[0] = 3;

  const std::vector<BadCase> cases = {
      {"empty file", {}, {"0 bytes", "shorter than the 8-byte"}},
      {"7 bytes", std::vector<std::uint8_t>(7, 0), {"7 bytes", "shorter than the 8-byte"}},
      {"length past end", with_length(100, 50), {"header length 100", "past the end", "file size 58"}},
      {"absurd length", with_length(1ULL << 63, 16), {"header length 9223372036854775808", "exceeds the limit"}},
      {"length 0", with_length(0, 0), {"not valid JSON"}},
      {"truncated JSON", raw_file("{\"a\":"), {"not valid JSON"}},
      {"not JSON", raw_file("{abc}"), {"not valid JSON"}},
      {"trailing garbage", raw_file("{} x"), {"not valid JSON"}},
      {"NUL in header", nul, {"NUL byte at offset 2"}},
      {"invalid UTF-8", raw_file("{\"\xff\xfe\":1}"), {"not valid JSON"}},
      {"comment", raw_file("{/*c*/}"), {"not valid JSON"}},
      {"array header", raw_file("[1,2]"), {"not a JSON object", "[1,2]"}},
      {"string header", raw_file("\"x\""), {"not a JSON object"}},
      {"entry not object", raw_file("{\"a\":3}"), {"tensor 'a'", "not a JSON object"}},
      {"no dtype", raw_file("{\"a\":{\"shape\":[2],\"data_offsets\":[0,8]}}", 8), {"tensor 'a'", "no 'dtype'"}},
      {"no shape", raw_file("{\"a\":{\"dtype\":\"F32\",\"data_offsets\":[0,8]}}", 8), {"tensor 'a'", "no 'shape'"}},
      {"no offsets", raw_file("{\"a\":{\"dtype\":\"F32\",\"shape\":[2]}}", 8), {"tensor 'a'", "no 'data_offsets'"}},
      {"dtype number", raw_file("{" + entry("a", "5", "[2]", "[0,8]") + "}", 8), {"'dtype' of tensor 'a'", "not a string"}},
      {"unknown dtype", raw_file("{" + entry("a", "\"F128\"", "[2]", "[0,8]") + "}", 8), {"tensor 'a'", "unknown dtype", "F128"}},
      {"lowercase dtype", raw_file("{" + entry("a", "\"f32\"", "[2]", "[0,8]") + "}", 8), {"unknown dtype", "f32"}},
      {"shape not list", raw_file("{" + entry("a", "\"F32\"", "2", "[0,8]") + "}", 8), {"'shape' of tensor 'a'", "not a list"}},
      {"shape float", raw_file("{" + entry("a", "\"F32\"", "[2.5]", "[0,8]") + "}", 8), {"'shape' of tensor 'a'", "non-integer", "2.5"}},
      {"shape exponent", raw_file("{" + entry("a", "\"F32\"", "[2e0]", "[0,8]") + "}", 8), {"non-integer"}},
      {"shape negative", raw_file("{" + entry("a", "\"F32\"", "[-2]", "[0,8]") + "}", 8), {"'shape' of tensor 'a'", "negative", "-2"}},
      {"shape string", raw_file("{" + entry("a", "\"F32\"", "[\"2\"]", "[0,8]") + "}", 8), {"non-number", "\"2\""}},
      {"shape null", raw_file("{" + entry("a", "\"F32\"", "[null]", "[0,8]") + "}", 8), {"non-number"}},
      {"shape overflow", raw_file("{" + entry("a", "\"F32\"", "[4294967296,4294967296,2]", "[0,8]") + "}", 8),
       {"tensor 'a'", "overflows"}},
      {"byte overflow", raw_file("{" + entry("a", "\"F32\"", "[4611686018427387904]", "[0,8]") + "}", 8),
       {"tensor 'a'", "overflows"}},
      {"dim above int64", raw_file("{" + entry("a", "\"U8\"", "[9223372036854775808]", "[0,8]") + "}", 8),
       {"overflows"}},
      {"dim above uint64", raw_file("{" + entry("a", "\"U8\"", "[18446744073709551616]", "[0,8]") + "}", 8),
       {"non-integer"}},
      {"offsets one", raw_file("{" + entry("a", "\"F32\"", "[2]", "[0]") + "}", 8), {"'data_offsets' of tensor 'a'", "two integers"}},
      {"offsets three", raw_file("{" + entry("a", "\"F32\"", "[2]", "[0,8,8]") + "}", 8), {"two integers"}},
      {"offsets string", raw_file("{" + entry("a", "\"F32\"", "[2]", "\"0,8\"") + "}", 8), {"two integers"}},
      {"offsets float", raw_file("{" + entry("a", "\"F32\"", "[2]", "[0,8.0]") + "}", 8), {"'data_offsets' of tensor 'a'", "non-integer"}},
      {"offsets negative", raw_file("{" + entry("a", "\"F32\"", "[0]", "[-8,-8]") + "}", 0), {"negative", "-8"}},
      {"begin > end", raw_file("{" + entry("a", "\"F32\"", "[0]", "[8,0]") + "}", 8), {"[8, 0]", "tensor 'a'", "begin > end"}},
      {"end past data", raw_file("{" + entry("a", "\"F32\"", "[4]", "[0,16]") + "}", 8),
       {"[0, 16]", "tensor 'a'", "exceed the data block of 8 bytes"}},
      {"end huge", raw_file("{" + entry("a", "\"F32\"", "[2]", "[0,18446744073709551615]") + "}", 8),
       {"exceed the data block"}},
      {"size mismatch", raw_file("{" + entry("a", "\"F32\"", "[2,2]", "[0,12]") + "}", 12),
       {"tensor 'a'", "[2, 2]", "F32", "16 bytes", "span 12 bytes"}},
      {"overlap", raw_file("{" + a_ok + "," + entry("b", "\"F32\"", "[2]", "[4,12]") + "}", 12),
       {"'a'", "'b'", "overlap", "[0, 8)", "[4, 12)"}},
      {"same range", raw_file("{" + a_ok + "," + entry("b", "\"F32\"", "[2]", "[0,8]") + "}", 8), {"overlap"}},
      {"hole", raw_file("{" + entry("a", "\"F32\"", "[1]", "[0,4]") + "," + entry("b", "\"F32\"", "[1]", "[8,12]") + "}", 12),
       {"bytes [4, 8)", "not covered"}},
      {"hole at start", raw_file("{" + entry("a", "\"F32\"", "[1]", "[4,8]") + "}", 8), {"bytes [0, 4)", "not covered"}},
      {"trailing data", raw_file("{" + entry("a", "\"F32\"", "[1]", "[0,4]") + "}", 8), {"bytes [4, 8)", "trailing"}},
      {"data without tensors", raw_file("{}", 4), {"bytes [0, 4)", "not covered"}},
      {"duplicate tensor", raw_file("{" + a_ok + "," + a_ok + "}", 8), {"duplicate key", "\"a\""}},
      {"duplicate field", raw_file("{\"a\":{\"dtype\":\"F32\",\"dtype\":\"I32\",\"shape\":[2],\"data_offsets\":[0,8]}}", 8),
       {"duplicate key", "\"dtype\""}},
      {"metadata list", raw_file("{\"__metadata__\":[1]}"), {"__metadata__", "not a JSON object"}},
      {"metadata number", raw_file("{\"__metadata__\":{\"k\":1}}"), {"__metadata__", "key 'k'", "not a string"}},
      {"deep nesting", raw_file(deep, 1), {"nested deeper than " + std::to_string(mla::io::kMaxJsonDepth)}},
      {"very deep nesting", raw_file(very_deep, 1), {"nested deeper than"}},
      {"deep shape", raw_file("{" + entry("a", "\"F32\"", std::string(200000, '[') + std::string(200000, ']'), "[0,8]") + "}", 8),
       {"nested deeper than"}},
      {"long value", raw_file("{" + entry("a", "\"F32\"", long_shape, "[0,8]") + "}", 8),
       {"'shape' of tensor 'a'", "non-number", "\"xxxxx"}},
      {"duplicate metadata key", raw_file("{\"__metadata__\":{\"k\":\"1\",\"k\":\"2\"}}"), {"duplicate key", "\"k\""}},
  };
  for (const BadCase& c : cases) {
    SCOPED_TRACE(c.what);
    std::vector<std::string> words = c.words;
    words.push_back("bad.safetensors");
    expect_throw<std::runtime_error>([&] { SafetensorsFile::from_bytes(c.bytes, "bad.safetensors"); }, words);
    // Messages quote bounded excerpts of the header, never the whole value.
    try {
      SafetensorsFile::from_bytes(c.bytes, "bad.safetensors");
    } catch (const std::runtime_error& e) {
      EXPECT_LT(std::string(e.what()).size(), 400u) << e.what();
    }
  }
}

TEST(Safetensors, ManyTensorsAndDuplicatesAmongThem) {
  // 20k entries (the size that used to take seconds: the duplicate-key check rescanned the
  // header object once per entry; the open time is in benchmarks/io_bench.cpp, not timed here).
  constexpr int kN = 20000;
  SafetensorsWriter w;
  for (int i = 0; i < kN; ++i) w.add("t" + std::to_string(i) + ".weight", {2}, std::vector<float>{float(i), 1.0f});
  const std::vector<std::uint8_t> bytes = w.to_bytes();
  const SafetensorsFile f = SafetensorsFile::from_bytes(bytes);
  ASSERT_EQ(f.size(), static_cast<std::size_t>(kN));
  for (int i : {0, 1, 9999, kN - 1}) {
    const std::string name = "t" + std::to_string(i) + ".weight";
    EXPECT_EQ(f.info(name).begin, 8u * static_cast<std::uint64_t>(i)) << name;
    EXPECT_EQ(f.read<float>(name), (std::vector<float>{float(i), 1.0f})) << name;
  }
  // The header without its closing brace (and padding): "{...,"t19999.weight":{...}".
  std::string open(bytes.begin() + 8, bytes.end() - 8 * kN);
  while (open.back() == ' ') open.pop_back();
  open.pop_back();
  // Its first entry repeated at the end: a duplicate 20k keys apart.
  expect_throw<std::runtime_error>(
      [&] {
        SafetensorsFile::from_bytes(raw_file(
            open + ",\"t0.weight\":{\"dtype\":\"F32\",\"shape\":[2],\"data_offsets\":[0,8]}}", 8 * kN));
      },
      {"duplicate key", "\"t0.weight\""});
  // A field repeated inside the last entry.
  expect_throw<std::runtime_error>(
      [&] {
        SafetensorsFile::from_bytes(raw_file(open.substr(0, open.size() - 1) + ",\"dtype\":\"F32\"}}", 8 * kN));
      },
      {"duplicate key", "\"dtype\""});
}

TEST(Safetensors, AcceptsValidEdgeCases) {
  // Empty header, whitespace padding, zero-size tensors sharing an offset, entries out of offset
  // order, unknown extra fields, and every dtype name.
  EXPECT_EQ(SafetensorsFile::from_bytes(raw_file("{}")).size(), 0u);
  EXPECT_EQ(SafetensorsFile::from_bytes(raw_file("{}      ")).size(), 0u);
  // Nesting up to the limit is fine (an unknown extra field holding lists).
  const std::string deepest = "{\"x\":{\"dtype\":\"U8\",\"shape\":[],\"data_offsets\":[0,1],\"extra\":" +
                              std::string(mla::io::kMaxJsonDepth - 2, '[') +
                              std::string(mla::io::kMaxJsonDepth - 2, ']') + "}}";
  EXPECT_EQ(SafetensorsFile::from_bytes(raw_file(deepest, 1)).size(), 1u);
  const std::string h = "{" + entry("b", "\"F32\"", "[1]", "[8,12]") + "," + entry("a", "\"F32\"", "[2]", "[0,8]") + "," +
                        entry("z", "\"F16\"", "[0,3]", "[8,8]") + "," + entry("y", "\"I64\"", "[0]", "[12,12]") + "," +
                        "\"c\":{\"dtype\":\"U8\",\"shape\":[],\"data_offsets\":[12,13],\"extra\":{\"k\":[1,2]}}" + "}   ";
  const SafetensorsFile f = SafetensorsFile::from_bytes(raw_file(h, 13));
  EXPECT_EQ(f.size(), 5u);
  EXPECT_EQ(f.info("z").numel(), 0);
  EXPECT_EQ(f.read_scalar<int>("c"), 0);
  const std::vector<std::string> dtypes = {"BOOL", "U8", "I8", "U16", "I16", "U32", "I32", "U64", "I64",
                                           "F16", "BF16", "F32", "F64", "F8_E4M3", "F8_E5M2", "F8_E8M0"};
  const std::vector<std::size_t> sizes = {1, 1, 1, 2, 2, 4, 4, 8, 8, 2, 2, 4, 8, 1, 1, 1};
  for (std::size_t i = 0; i < dtypes.size(); ++i) {
    const std::string n = std::to_string(3 * sizes[i]);
    const SafetensorsFile g =
        SafetensorsFile::from_bytes(raw_file("{" + entry("t", "\"" + dtypes[i] + "\"", "[3]", "[0," + n + "]") + "}", 3 * sizes[i]));
    EXPECT_EQ(mla::io::dtype_name(g.info("t").dtype), dtypes[i]);
    EXPECT_EQ(mla::io::dtype_size(g.info("t").dtype), sizes[i]);
    // Zero bytes are zero in every dtype but E8M0, whose code 0 is 2^-127.
    const double zero = dtypes[i] == "F8_E8M0" ? std::ldexp(1.0, -127) : 0.0;
    EXPECT_EQ(g.read<double>("t"), std::vector<double>(3, zero)) << dtypes[i];
  }
}

TEST(Safetensors, RandomCorruptionNeverCrashes) {
  // Flip bytes of a valid image; every outcome must be success or std::runtime_error.
  SafetensorsWriter w;
  w.add("w", {3, 5}, std::vector<float>(15, 1.0f)).add("i", {4}, std::vector<std::int64_t>{1, 2, 3, 4});
  w.set_metadata("k", "v");
  const std::vector<std::uint8_t> good = w.to_bytes();
  std::mt19937 rng(42);
  int ok = 0;
  for (int trial = 0; trial < 3000; ++trial) {
    std::vector<std::uint8_t> b = good;
    const int flips = 1 + static_cast<int>(rng() % 4);
    for (int k = 0; k < flips; ++k) b[rng() % b.size()] = static_cast<std::uint8_t>(rng());
    if (rng() % 8 == 0) b.resize(rng() % b.size());
    try {
      const SafetensorsFile f = SafetensorsFile::from_bytes(b);
      for (const std::string& n : f.names()) {
        try {
          f.read<double>(n);
        } catch (const std::runtime_error&) {
        }
      }
      ++ok;
    } catch (const std::runtime_error&) {
    }
  }
  EXPECT_GT(ok, 0);  // some flips land in the data block and leave a valid file
}

// ---------------------------------------------------------------------------------------------
// Files on disk

TEST(Safetensors, OpenFromPath) {
  TempDir dir;
  const fs::path p = dir.path / "t.safetensors";
  std::vector<Eigen::half> big(300000);  // more than one conversion chunk
  for (std::size_t i = 0; i < big.size(); ++i) big[i] = Eigen::half(static_cast<float>(i % 2048));
  SafetensorsWriter().add("big", {300000}, big).add("x", {2}, std::vector<double>{1.0, 2.0}).write(p);
  const SafetensorsFile f(p);
  EXPECT_EQ(f.label(), p.string());
  const std::vector<float> v = f.read<float>("big");
  ASSERT_EQ(v.size(), big.size());
  for (std::size_t i = 0; i < v.size(); i += 997) EXPECT_EQ(v[i], static_cast<float>(i % 2048)) << i;
  EXPECT_EQ(v[299999], static_cast<float>(299999 % 2048));
  EXPECT_EQ(f.read<double>("x"), (std::vector<double>{1.0, 2.0}));  // memcpy path from the file
  expect_throw<std::runtime_error>([&] { f.read<double>("y"); }, {"tensor 'y' not found", p.string()});

  // Reads from several threads share the stream.
  std::vector<std::thread> threads;
  std::vector<int> good(4, 0);
  for (int t = 0; t < 4; ++t) {
    threads.emplace_back([&, t] {
      for (int k = 0; k < 20; ++k) good[t] += f.read<double>("x")[1] == 2.0 && f.read<float>("big")[2049] == 1.0f;
    });
  }
  for (std::thread& t : threads) t.join();
  EXPECT_EQ(good, std::vector<int>(4, 20));

  expect_throw<std::runtime_error>([&] { SafetensorsFile g(dir.path / "missing.safetensors"); },
                                   {"missing.safetensors", "does not exist"});
  expect_throw<std::runtime_error>([&] { SafetensorsFile g(dir.path); }, {"not a regular file"});

  // A file that shrinks after opening gives an error, not a crash.
  fs::resize_file(p, fs::file_size(p) - 100000);
  expect_throw<std::runtime_error>([&] { f.read<float>("x"); }, {"short read", p.string()});

  const fs::path q = dir.path / "short.safetensors";
  { std::ofstream(q, std::ios::binary) << "abc"; }
  expect_throw<std::runtime_error>([&] { SafetensorsFile g(q); }, {"short.safetensors", "3 bytes"});
}

// ---------------------------------------------------------------------------------------------
// FP8 block-scaled weights

struct Fp8Weight {
  std::vector<std::uint8_t> codes;  // [rows, cols]
  std::vector<float> scale;         // [srows, scols]
  mla::Index rows, cols, srows, scols, br, bc;
};

Fp8Weight make_fp8(mla::Index rows, mla::Index cols, mla::Index br, mla::Index bc) {
  Fp8Weight w{{}, {}, rows, cols, (rows + br - 1) / br, (cols + bc - 1) / bc, br, bc};
  for (mla::Index i = 0; i < rows; ++i) {
    for (mla::Index j = 0; j < cols; ++j) {
      int c = static_cast<int>((i * 31 + j * 7 + 3) % 256);
      if ((c & 0x7F) == 0x7F) c ^= 0x01;  // keep NaN out of the bulk comparison
      w.codes.push_back(static_cast<std::uint8_t>(c));
    }
  }
  for (mla::Index k = 0; k < w.srows * w.scols; ++k) w.scale.push_back(0.0013f * static_cast<float>(k + 1) + 0.5f);
  return w;
}

TEST(Fp8, BlockDequantisationIn200x130) {
  const Fp8Weight q = make_fp8(200, 130, 128, 128);
  ASSERT_EQ(q.srows, 2);
  ASSERT_EQ(q.scols, 2);
  SafetensorsWriter w;
  w.add_raw("layer.weight", Dtype::kF8E4M3, {200, 130}, q.codes.data(), q.codes.size());
  w.add("layer.weight_scale_inv", {2, 2}, q.scale);
  w.add_raw("plain.weight", Dtype::kF8E4M3, {200, 130}, q.codes.data(), q.codes.size());
  SafetensorsFile f = SafetensorsFile::from_bytes(w.to_bytes());

  const mla::Matrix<double> d = f.read_matrix<double>("layer.weight", 200, 130);
  const mla::Matrix<float> s = f.read_matrix<float>("layer.weight", 200, 130);
  for (mla::Index i = 0; i < 200; ++i) {
    for (mla::Index j = 0; j < 130; ++j) {
      const int c = q.codes[static_cast<std::size_t>(i * 130 + j)];
      const float sc = q.scale[static_cast<std::size_t>((i / 128) * 2 + j / 128)];
      ASSERT_EQ(d(i, j), ref_e4m3(c) * static_cast<double>(sc)) << i << "," << j;
      ASSERT_EQ(s(i, j), static_cast<float>(ref_e4m3(c)) * sc) << i << "," << j;
    }
  }
  // Block boundaries, with the scale index spelled out.
  const auto expect_at = [&](mla::Index i, mla::Index j, int si, int sj) {
    const int c = q.codes[static_cast<std::size_t>(i * 130 + j)];
    EXPECT_EQ(d(i, j), ref_e4m3(c) * static_cast<double>(q.scale[static_cast<std::size_t>(si * 2 + sj)]))
        << i << "," << j;
  };
  expect_at(127, 127, 0, 0);
  expect_at(127, 128, 0, 1);
  expect_at(128, 127, 1, 0);
  expect_at(128, 128, 1, 1);
  expect_at(199, 129, 1, 1);
  expect_at(0, 129, 0, 1);

  // Without a scale tensor the codes are decoded as they are.
  const mla::Matrix<double> p = f.read_matrix<double>("plain.weight", 200, 130);
  EXPECT_EQ(p(5, 7), ref_e4m3(q.codes[5 * 130 + 7]));
  EXPECT_EQ(f.read<double>("layer.weight")[5 * 130 + 7], ref_e4m3(q.codes[5 * 130 + 7]));

  // bf16 target: the float product rounded once.
  const mla::Matrix<Eigen::bfloat16> b = f.read_matrix<Eigen::bfloat16>("layer.weight", 200, 130);
  EXPECT_EQ(static_cast<float>(b(150, 100)), static_cast<float>(Eigen::bfloat16(s(150, 100))));

  // A block size the scales do not fit.
  f.set_fp8_block({64, 32});
  expect_throw<std::runtime_error>([&] { f.read_matrix<float>("layer.weight", 200, 130); },
                                   {"layer.weight_scale_inv", "64x32", "expected shape [4, 5], file has [2, 2]"});
  expect_throw<std::invalid_argument>([&] { f.set_fp8_block({0, 128}); }, {"positive"});
}

TEST(Fp8, CustomBlockSizeE5m2AndBadScales) {
  const Fp8Weight q = make_fp8(70, 33, 64, 32);
  ASSERT_EQ(q.srows, 2);
  ASSERT_EQ(q.scols, 2);
  std::vector<Eigen::bfloat16> scale_bf;
  for (float s : q.scale) scale_bf.push_back(Eigen::bfloat16(s));
  std::vector<std::uint8_t> codes = q.codes;
  codes[0] = 0x7F;  // NaN propagates
  SafetensorsWriter w;
  w.add_raw("e5.weight", Dtype::kF8E5M2, {70, 33}, codes.data(), codes.size());
  w.add("e5.weight_scale_inv", {2, 2}, scale_bf);
  w.add_raw("e4.weight", Dtype::kF8E4M3, {70, 33}, codes.data(), codes.size());
  w.add("e4.weight_scale_inv", {2, 2}, std::vector<std::int32_t>{1, 2, 3, 4});
  SafetensorsFile f = SafetensorsFile::from_bytes(w.to_bytes());
  f.set_fp8_block({64, 32});
  const mla::Matrix<double> d = f.read_matrix<double>("e5.weight", 70, 33);
  for (mla::Index i = 0; i < 70; ++i) {
    for (mla::Index j = 0; j < 33; ++j) {
      const double sc = static_cast<float>(scale_bf[static_cast<std::size_t>((i / 64) * 2 + j / 32)]);
      const double want = ref_e5m2(codes[static_cast<std::size_t>(i * 33 + j)]) * sc;
      if (std::isnan(want)) {
        ASSERT_TRUE(std::isnan(d(i, j)));
      } else {
        ASSERT_EQ(d(i, j), want) << i << "," << j;
      }
    }
  }
  expect_throw<std::runtime_error>([&] { f.read_matrix<float>("e4.weight", 70, 33); },
                                   {"e4.weight_scale_inv", "dtype I32"});
  // FP8 values (NaN included) have no integer reading, scaled or not.
  expect_throw<std::runtime_error>([&] { f.read_matrix<std::int32_t>("e5.weight", 70, 33); },
                                   {"'e5.weight'", "F8_E5M2", "integer"});
}

TEST(Fp8, ScalesThatAreNotFinitePositiveAreRejected) {
  // Each bad scale would turn its block into NaN, inf or zeros: the error names the scale tensor,
  // the weight, the element [row, col] of the scale grid and its value.
  const Fp8Weight q = make_fp8(70, 33, 64, 32);  // scales [2, 2]
  const float inf = std::numeric_limits<float>::infinity();
  const std::vector<std::pair<float, std::string>> bad = {
      {std::numeric_limits<float>::quiet_NaN(), "nan"}, {inf, "inf"}, {-inf, "-inf"},
      {0.0f, "is 0;"}, {-0.0f, "is -0;"}, {-0.5f, "-0.5"}};
  for (const auto& [value, text] : bad) {
    SCOPED_TRACE(text);
    std::vector<float> scale = q.scale;
    scale[3] = value;  // element [1, 1]
    SafetensorsWriter w;
    w.add_raw("w.weight", Dtype::kF8E4M3, {70, 33}, q.codes.data(), q.codes.size());
    w.add("w.weight_scale_inv", {2, 2}, scale);
    SafetensorsFile f = SafetensorsFile::from_bytes(w.to_bytes(), "s.safetensors");
    f.set_fp8_block({64, 32});
    expect_throw<std::runtime_error>([&] { f.read_matrix<float>("w.weight", 70, 33); },
                                     {"scale tensor 'w.weight_scale_inv'", "s.safetensors",
                                      "FP8 weight 'w.weight'", "element [1, 1]", text,
                                      "finite and positive"});
  }
  // Other scale dtypes go through the same check after conversion: an F8_E8M0 NaN code (0xFF)
  // and an F16 infinity (0x7C00).
  {
    const std::vector<std::uint8_t> e8 = {127, 0xFF, 127, 127};
    SafetensorsWriter w;
    w.add_raw("w.weight", Dtype::kF8E4M3, {70, 33}, q.codes.data(), q.codes.size());
    w.add_raw("w.weight_scale_inv", Dtype::kF8E8M0, {2, 2}, e8.data(), e8.size());
    SafetensorsFile f = SafetensorsFile::from_bytes(w.to_bytes());
    f.set_fp8_block({64, 32});
    expect_throw<std::runtime_error>([&] { f.read_matrix<double>("w.weight", 70, 33); },
                                     {"element [0, 1]", "nan"});
  }
  {
    const std::vector<std::uint8_t> f16 = u16_bytes({0x3C00, 0x3C00, 0x7C00, 0x3C00});
    SafetensorsWriter w;
    w.add_raw("w.weight", Dtype::kF8E5M2, {70, 33}, q.codes.data(), q.codes.size());
    w.add_raw("w.weight_scale_inv", Dtype::kF16, {2, 2}, f16.data(), f16.size());
    SafetensorsFile f = SafetensorsFile::from_bytes(w.to_bytes());
    f.set_fp8_block({64, 32});
    expect_throw<std::runtime_error>([&] { f.read_matrix<float>("w.weight", 70, 33); },
                                     {"element [1, 0]", "inf"});
  }
}

// ---------------------------------------------------------------------------------------------
// The reference files

TEST(SafetensorsReference, DeepseekV3TinyModel) {
  const fs::path p = fs::path(reference_dir()) / "deepseek_v3_tiny" / "model.safetensors";
  const SafetensorsFile f(p);
  const std::string pre = "model.layers.0.self_attn.";
  // Shapes from the README's MLA layout with hidden 256, H 4, q_lora 96, kv_lora 64, nope 32, rope 16, v 32.
  const std::vector<std::pair<std::string, std::vector<std::int64_t>>> shapes = {
      {"q_a_proj.weight", {96, 256}},          {"q_a_layernorm.weight", {96}},
      {"q_b_proj.weight", {4 * (32 + 16), 96}}, {"kv_a_proj_with_mqa.weight", {64 + 16, 256}},
      {"kv_a_layernorm.weight", {64}},         {"kv_b_proj.weight", {4 * (32 + 32), 64}},
      {"o_proj.weight", {256, 4 * 32}},
  };
  EXPECT_EQ(f.size(), shapes.size());
  std::uint64_t total = 0;
  for (const auto& [name, shape] : shapes) {
    ASSERT_TRUE(f.contains(pre + name)) << name;
    EXPECT_EQ(f.info(pre + name).dtype, Dtype::kF32) << name;
    EXPECT_EQ(f.info(pre + name).shape, shape) << name;
    total += f.info(pre + name).nbytes();
  }
  EXPECT_EQ(f.data_offset() + total, fs::file_size(p));  // fully indexed
  EXPECT_EQ(f.metadata().at("format"), "pt");

  const std::string kvb = pre + "kv_b_proj.weight";
  const mla::Matrix<float> m = f.read_matrix<float>(kvb, 256, 64);
  const std::vector<std::uint8_t> raw = f.read_bytes(kvb);
  ASSERT_EQ(raw.size(), 256u * 64u * 4u);
  float x;
  std::memcpy(&x, raw.data() + 4 * (17 * 64 + 5), 4);
  EXPECT_EQ(m(17, 5), x);
  std::memcpy(&x, raw.data() + raw.size() - 4, 4);
  EXPECT_EQ(m(255, 63), x);
  EXPECT_TRUE(f.read_matrix<double>(kvb, 256, 64).cast<float>() == m);
  // Linear weights are N(0,1)/sqrt(fan_in = 64): the sample std is near 1/8.
  const double mean = m.cast<double>().mean();
  const double sd = std::sqrt((m.cast<double>().array() - mean).square().mean());
  EXPECT_NEAR(sd, 0.125, 0.01);
  expect_throw<std::runtime_error>([&] { f.read_matrix<float>(kvb, 64, 256); },
                                   {"tensor '" + kvb + "'", "expected shape [64, 256], file has [256, 64]", p.string()});
  expect_throw<std::runtime_error>([&] { f.read_matrix<float>(pre + "q_proj.weight", 192, 256); },
                                   {"'model.layers.0.self_attn.q_proj.weight' not found", p.string()});
}

TEST(SafetensorsReference, DeepseekV3TinyIo) {
  const fs::path dir = fs::path(reference_dir()) / "deepseek_v3_tiny";
  const SafetensorsFile f(dir / "io.safetensors");
  EXPECT_EQ(f.info("position_ids").dtype, Dtype::kI64);
  const mla::Positions pos = f.read_vector<std::int64_t>("position_ids", 19);
  for (int t = 0; t < 19; ++t) EXPECT_EQ(pos(t), t);
  EXPECT_EQ(f.info("attn_scale").dtype, Dtype::kF64);
  EXPECT_TRUE(f.info("attn_scale").shape.empty());
  const double scale = f.read_scalar<double>("attn_scale");
  EXPECT_EQ(scale, 0.18713033519502428);
  const double m = 0.1 * std::log(4.0) + 1.0;
  EXPECT_NEAR(scale, m * m / std::sqrt(48.0), 1e-16);
  EXPECT_EQ(f.read_scalar<float>("attn_scale"), 0.18713033519502428f);
  EXPECT_EQ(f.read_scalar<double>("rope_attention_factor"), 1.0);
  const std::vector<double> inv = f.read<double>("rope_inv_freq", {8});
  EXPECT_EQ(inv[0], 1.0);  // yarn ramp is 0 at i = 0: theta^0, unscaled
  EXPECT_EQ(f.metadata().at("case"), "deepseek_v3_tiny");
  EXPECT_EQ(f.metadata().at("io"), "io");
  EXPECT_EQ(f.metadata().at("num_tokens"), "19");
  EXPECT_EQ(f.metadata().at("positions"), "0..18");
  EXPECT_EQ(f.read_matrix<float>("hidden_states", 19, 256).rows(), 19);
  EXPECT_EQ(f.read<float>("attn_output_heads", {19, 4, 32}).size(), 19u * 4 * 32);
  expect_throw<std::runtime_error>([&] { f.read_matrix<float>("attn_output_heads", 19, 128); },
                                   {"expected shape [19, 128], file has [19, 4, 32]"});

  const SafetensorsFile g(dir / "io_long.safetensors");
  const std::vector<std::int64_t> p = g.read<std::int64_t>("position_ids");
  ASSERT_EQ(p.size(), 9u);
  for (int t = 0; t < 9; ++t) EXPECT_EQ(p[static_cast<std::size_t>(t)], 200 + t);
}

TEST(SafetensorsReference, LlamaInverseFrequencies) {
  const SafetensorsFile f(fs::path(reference_dir()) / "llama_mha_tiny" / "io.safetensors");
  const std::vector<double> inv = f.read<double>("rope_inv_freq", {16});
  for (int i = 0; i < 16; ++i) {
    const double want = std::pow(1e4, -2.0 * i / 32.0);  // default RoPE, theta 1e4, head_dim 32
    EXPECT_NEAR(inv[static_cast<std::size_t>(i)], want, 1e-14 * want) << i;
  }
  EXPECT_EQ(f.read_scalar<double>("attn_scale"), 0.1767766952966369);
}

}  // namespace
