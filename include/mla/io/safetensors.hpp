// Reading and writing .safetensors files (https://github.com/huggingface/safetensors, format section
// of its README): 8-byte little-endian header length N, N bytes of UTF-8 JSON, then the data block.
// The JSON maps each tensor name to {"dtype", "shape", "data_offsets": [begin, end]} (offsets relative
// to the data block) plus an optional "__metadata__" string -> string map.
//
// SafetensorsFile validates the whole header when it is opened, the way the reference Rust
// implementation does, and rejects anything it does not accept: header length over 100 MB or past
// the end of the file, JSON that is not an object, duplicate keys, unknown dtypes, shapes that are
// not non-negative integers or whose product overflows, byte ranges that do not match
// shape x dtype size, ranges that overlap, and data blocks that are not fully indexed (a hole
// between tensors or bytes after the last one are errors, as the spec requires).
//
// Storage: a file opened from a path keeps only its header in memory. Tensor bytes are read from the
// file on each read call (seek + read under a mutex; nothing is cached, no mmap), so a 5 GB shard
// costs nothing until its tensors are read and a file that shrinks after opening gives an error,
// not SIGBUS. from_bytes() keeps its own copy of an in-memory buffer (tests, fuzzing).
//
// Errors: everything that is wrong with the file or folder contents, or does not match what the
// caller expected from it (malformed header, missing tensor, shape mismatch, a dtype that cannot be
// converted to the requested type, a value out of range of the requested integer type), throws
// std::runtime_error whose message names the file (or "<memory>"), the tensor, the expected and the
// actual values. std::invalid_argument is only for arguments that are wrong whatever the file holds
// (negative rows, a non-positive FP8 block size, a writer given inconsistent sizes).
//
// Conversions done by read<T>: any float or integer dtype -> float, double, Eigen::bfloat16,
// Eigen::half (round to nearest even; F64 -> 16-bit goes through float); integer and BOOL dtypes ->
// any integer type, range-checked per element; float dtypes -> integer types are refused. FP8
// tensors are decoded without scaling, except in read_matrix, which applies the DeepSeek block
// scales (`<name>_scale_inv`) when that tensor exists (see mla/io/fp8.hpp) and refuses scales that
// are NaN, infinite, zero or negative.
//
// The header JSON is read with mla/io/json.hpp, one entry at a time: nesting deeper than
// kMaxJsonDepth is refused before it is built, and messages quote values through json_excerpt().
// Parsing and validation cost O(n log n) for n entries (set and map insertions, one sort by
// offset); nothing rescans the entries read so far.
//
// Not thread-hostile: all const members may be called concurrently on one object.
#pragma once

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <limits>
#include <map>
#include <memory>
#include <mutex>
#include <optional>
#include <set>
#include <string>
#include <tuple>
#include <type_traits>
#include <utility>
#include <vector>

#include <nlohmann/json.hpp>

#include "mla/core/check.hpp"
#include "mla/core/types.hpp"
#include "mla/io/fp8.hpp"
#include "mla/io/json.hpp"

#if defined(__BYTE_ORDER__) && defined(__ORDER_LITTLE_ENDIAN__) && __BYTE_ORDER__ != __ORDER_LITTLE_ENDIAN__
#error "mla/io/safetensors.hpp assumes a little-endian host (safetensors data is little-endian)"
#endif

namespace mla {
namespace io {

/// Element types of the safetensors format (names as in the header: "F32", "BF16", "F8_E4M3", ...).
enum class Dtype : std::uint8_t {
  kBool, kU8, kI8, kU16, kI16, kU32, kI32, kU64, kI64,
  kF16, kBF16, kF32, kF64, kF8E4M3, kF8E5M2, kF8E8M0,
};

/// Header spelling of a dtype ("F32").
inline const char* dtype_name(Dtype d) {
  switch (d) {
    case Dtype::kBool: return "BOOL";
    case Dtype::kU8: return "U8";
    case Dtype::kI8: return "I8";
    case Dtype::kU16: return "U16";
    case Dtype::kI16: return "I16";
    case Dtype::kU32: return "U32";
    case Dtype::kI32: return "I32";
    case Dtype::kU64: return "U64";
    case Dtype::kI64: return "I64";
    case Dtype::kF16: return "F16";
    case Dtype::kBF16: return "BF16";
    case Dtype::kF32: return "F32";
    case Dtype::kF64: return "F64";
    case Dtype::kF8E4M3: return "F8_E4M3";
    case Dtype::kF8E5M2: return "F8_E5M2";
    case Dtype::kF8E8M0: return "F8_E8M0";
  }
  return "?";
}

/// Bytes per element.
inline std::size_t dtype_size(Dtype d) {
  switch (d) {
    case Dtype::kBool: case Dtype::kU8: case Dtype::kI8:
    case Dtype::kF8E4M3: case Dtype::kF8E5M2: case Dtype::kF8E8M0: return 1;
    case Dtype::kU16: case Dtype::kI16: case Dtype::kF16: case Dtype::kBF16: return 2;
    case Dtype::kU32: case Dtype::kI32: case Dtype::kF32: return 4;
    case Dtype::kU64: case Dtype::kI64: case Dtype::kF64: return 8;
  }
  return 0;
}

/// Parses a header dtype string (case-sensitive, as the format defines it); nullopt if unknown.
inline std::optional<Dtype> dtype_from_name(const std::string& s) {
  for (int i = 0; i <= static_cast<int>(Dtype::kF8E8M0); ++i) {
    const Dtype d = static_cast<Dtype>(i);
    if (s == dtype_name(d)) return d;
  }
  return std::nullopt;
}

/// True for the floating-point dtypes (F16, BF16, F32, F64 and the FP8 formats).
inline bool dtype_is_float(Dtype d) { return d >= Dtype::kF16; }

/// One header entry. Offsets are relative to the start of the data block, as in the file.
struct TensorInfo {
  std::string name;
  Dtype dtype = Dtype::kF32;
  std::vector<std::int64_t> shape;  // [] for a 0-d scalar
  std::uint64_t begin = 0;          // data_offsets[0]
  std::uint64_t end = 0;            // data_offsets[1] (exclusive)

  std::uint64_t nbytes() const { return end - begin; }
  /// Product of the dims (1 for a scalar); validated at open not to overflow.
  std::int64_t numel() const {
    std::int64_t n = 1;
    for (std::int64_t d : shape) n *= d;
    return n;
  }
};

}  // namespace io

namespace internal {
namespace tensor_io {

using ::mla::io::Dtype;
using ::mla::io::Fp8BlockSize;
using ::mla::io::Fp8Format;
using ::mla::io::TensorInfo;
using ::mla::io::dtype_is_float;
using ::mla::io::dtype_name;
using ::mla::io::bfloat16_bits_to_float;
using ::mla::io::dequantize_fp8_blockwise;
using ::mla::io::float16_bits_to_float;
using ::mla::io::fp8_e8m0_to_float;
using ::mla::io::fp8_scale_dim;
using ::mla::io::fp8_table;

template <class T>
struct IsHalfLike
    : std::integral_constant<bool, std::is_same<T, Eigen::bfloat16>::value ||
                                       std::is_same<T, Eigen::half>::value> {};
template <class T>
constexpr bool kIsFloatTarget = std::is_floating_point<T>::value || IsHalfLike<T>::value;
template <class T>
constexpr bool kIsIntTarget = std::is_integral<T>::value && !std::is_same<T, bool>::value;

/// The dtype whose bytes are exactly a T (the writer's choice and the reader's memcpy fast path).
template <class T>
constexpr std::optional<Dtype> native_dtype() {
  if constexpr (std::is_same<T, float>::value) return Dtype::kF32;
  else if constexpr (std::is_same<T, double>::value) return Dtype::kF64;
  else if constexpr (std::is_same<T, Eigen::bfloat16>::value) return Dtype::kBF16;
  else if constexpr (std::is_same<T, Eigen::half>::value) return Dtype::kF16;
  else if constexpr (std::is_same<T, bool>::value) return Dtype::kBool;
  else if constexpr (std::is_integral<T>::value && std::is_signed<T>::value) {
    switch (sizeof(T)) {
      case 1: return Dtype::kI8;
      case 2: return Dtype::kI16;
      case 4: return Dtype::kI32;
      case 8: return Dtype::kI64;
      default: return std::nullopt;
    }
  } else if constexpr (std::is_integral<T>::value) {
    switch (sizeof(T)) {
      case 1: return Dtype::kU8;
      case 2: return Dtype::kU16;
      case 4: return Dtype::kU32;
      case 8: return Dtype::kU64;
      default: return std::nullopt;
    }
  } else {
    return std::nullopt;
  }
}

template <class T>
T load_le(const std::uint8_t* p) {
  T v;
  std::memcpy(&v, p, sizeof v);
  return v;
}

/// Whether the integer v is representable in the integer type T.
template <class T, class S>
bool int_fits(S v) {
  if constexpr (std::is_signed<S>::value) {
    if (v < 0) {
      if constexpr (std::is_signed<T>::value) {
        return static_cast<std::int64_t>(v) >= static_cast<std::int64_t>(std::numeric_limits<T>::min());
      } else {
        return false;
      }
    }
  }
  return static_cast<std::uint64_t>(v) <= static_cast<std::uint64_t>(std::numeric_limits<T>::max());
}

template <class T, class Src, class F>
void convert_loop(const std::uint8_t* src, std::size_t n, T* dst, F f) {
  for (std::size_t i = 0; i < n; ++i) dst[i] = f(load_le<Src>(src + i * sizeof(Src)));
}

template <class T, class Src>
void convert_int_checked(const std::uint8_t* src, std::size_t n, T* dst, const std::string& context,
                         std::size_t first_index) {
  for (std::size_t i = 0; i < n; ++i) {
    const Src v = load_le<Src>(src + i * sizeof(Src));
    if (!int_fits<T>(v)) {
      using Wide = std::conditional_t<std::is_signed<Src>::value, std::int64_t, std::uint64_t>;
      throw std::runtime_error(str_cat(context, ": element ", first_index + i, " (value ",
                                       static_cast<Wide>(v), ") does not fit in the requested ",
                                       std::is_signed<T>::value ? "signed " : "unsigned ",
                                       8 * sizeof(T), "-bit integer type"));
    }
    dst[i] = static_cast<T>(v);
  }
}

/// Converts n little-endian elements of dtype d at src to T (see the header comment for the rules).
/// `context` ("safetensors file 'f': tensor 't'") and `first_index` only serve error messages.
template <class T>
void convert_elements(const std::uint8_t* src, Dtype d, std::size_t n, T* dst,
                      const std::string& context, std::size_t first_index) {
  static_assert(kIsFloatTarget<T> || kIsIntTarget<T>,
                "safetensors read<T>: T must be float, double, Eigen::bfloat16, Eigen::half or a "
                "non-bool integer type");
  if (n == 0) return;
  if (native_dtype<T>() == d && d != Dtype::kBool) {
    std::memcpy(static_cast<void*>(dst), src, n * sizeof(T));
    return;
  }
  if constexpr (kIsFloatTarget<T>) {
    const auto cast = [](auto v) { return static_cast<T>(v); };
    switch (d) {
      case Dtype::kF32: return convert_loop<T, float>(src, n, dst, cast);
      case Dtype::kF64: return convert_loop<T, double>(src, n, dst, cast);
      case Dtype::kF16:
        return convert_loop<T, std::uint16_t>(
            src, n, dst, [](std::uint16_t b) { return static_cast<T>(float16_bits_to_float(b)); });
      case Dtype::kBF16:
        return convert_loop<T, std::uint16_t>(
            src, n, dst, [](std::uint16_t b) { return static_cast<T>(bfloat16_bits_to_float(b)); });
      case Dtype::kF8E4M3:
      case Dtype::kF8E5M2: {
        const std::array<float, 256>& table =
            fp8_table(d == Dtype::kF8E4M3 ? Fp8Format::kE4M3 : Fp8Format::kE5M2);
        for (std::size_t i = 0; i < n; ++i) dst[i] = static_cast<T>(table[src[i]]);
        return;
      }
      case Dtype::kF8E8M0:
        for (std::size_t i = 0; i < n; ++i) dst[i] = static_cast<T>(fp8_e8m0_to_float(src[i]));
        return;
      case Dtype::kBool:
        for (std::size_t i = 0; i < n; ++i) dst[i] = static_cast<T>(src[i] != 0 ? 1 : 0);
        return;
      case Dtype::kU8: return convert_loop<T, std::uint8_t>(src, n, dst, cast);
      case Dtype::kI8: return convert_loop<T, std::int8_t>(src, n, dst, cast);
      case Dtype::kU16: return convert_loop<T, std::uint16_t>(src, n, dst, cast);
      case Dtype::kI16: return convert_loop<T, std::int16_t>(src, n, dst, cast);
      case Dtype::kU32: return convert_loop<T, std::uint32_t>(src, n, dst, cast);
      case Dtype::kI32: return convert_loop<T, std::int32_t>(src, n, dst, cast);
      case Dtype::kU64: return convert_loop<T, std::uint64_t>(src, n, dst, cast);
      case Dtype::kI64: return convert_loop<T, std::int64_t>(src, n, dst, cast);
    }
  } else {
    switch (d) {
      case Dtype::kBool:
        for (std::size_t i = 0; i < n; ++i) dst[i] = static_cast<T>(src[i] != 0 ? 1 : 0);
        return;
      case Dtype::kU8: return convert_int_checked<T, std::uint8_t>(src, n, dst, context, first_index);
      case Dtype::kI8: return convert_int_checked<T, std::int8_t>(src, n, dst, context, first_index);
      case Dtype::kU16: return convert_int_checked<T, std::uint16_t>(src, n, dst, context, first_index);
      case Dtype::kI16: return convert_int_checked<T, std::int16_t>(src, n, dst, context, first_index);
      case Dtype::kU32: return convert_int_checked<T, std::uint32_t>(src, n, dst, context, first_index);
      case Dtype::kI32: return convert_int_checked<T, std::int32_t>(src, n, dst, context, first_index);
      case Dtype::kU64: return convert_int_checked<T, std::uint64_t>(src, n, dst, context, first_index);
      case Dtype::kI64: return convert_int_checked<T, std::int64_t>(src, n, dst, context, first_index);
      default:
        throw std::runtime_error(str_cat(context, ": dtype ", dtype_name(d),
                                         " is a float type and cannot be read as an integer type"));
    }
  }
}

/// "tensor 'x' in 'where': expected shape [a, b], file has [c, d]" unless the shapes agree.
inline void check_shape(const TensorInfo& ti, const std::vector<std::int64_t>& expected,
                        const std::string& where) {
  if (ti.shape != expected) {
    throw std::runtime_error(str_cat("tensor '", ti.name, "' in '", where, "': expected shape ",
                                     shape_str(expected), ", file has ", shape_str(ti.shape)));
  }
}

/// Shared by SafetensorsFile and Checkpoint. Reader provides info, contains, where, read_into,
/// read_bytes and read<float>. Applies the FP8 block scales `<name>_scale_inv` when present, after
/// checking that every scale is finite and positive (a NaN, infinite, zero or negative scale
/// would turn its whole block into NaN, inf or zeros). With `scales_required` (the checkpoint
/// declares FP8 quantization), an FP8 weight without its scale tensor is an error: its codes
/// alone are the weight divided by the block scale.
template <class Scalar, class Reader>
Matrix<Scalar> read_matrix_from(const Reader& r, const std::string& name, Index rows, Index cols,
                                Fp8BlockSize block, bool scales_required) {
  MLA_CHECK_ARG(rows >= 0 && cols >= 0, "read_matrix('", name, "'): negative shape [", rows, ", ",
                cols, "]");
  const TensorInfo& ti = r.info(name);
  check_shape(ti, {rows, cols}, r.where(name));
  Matrix<Scalar> m(rows, cols);
  // Integer targets skip this and reach read_into, which refuses float dtypes with a clear message.
  if constexpr (kIsFloatTarget<Scalar>) {
    const std::string scale_name = name + "_scale_inv";
    const bool fp8 = ti.dtype == Dtype::kF8E4M3 || ti.dtype == Dtype::kF8E5M2;
    if (fp8 && scales_required && !r.contains(scale_name)) {
      throw std::runtime_error(str_cat(
          "FP8 weight '", name, "' (", dtype_name(ti.dtype), ") in '", r.where(name),
          "' has no scale tensor '", scale_name, "', but the checkpoint declares FP8 quantization "
          "(config.json quantization_config.quant_method \"fp8\"): its codes would load unscaled"));
    }
    if (fp8 && r.contains(scale_name)) {
      MLA_CHECK_ARG(block.rows > 0 && block.cols > 0, "FP8 block size [", block.rows, ", ",
                    block.cols, "] must be positive");
      const TensorInfo& si = r.info(scale_name);
      const std::vector<std::int64_t> want = {fp8_scale_dim(rows, block.rows),
                                              fp8_scale_dim(cols, block.cols)};
      if (si.shape != want) {
        throw std::runtime_error(str_cat(
            "scale tensor '", scale_name, "' in '", r.where(scale_name), "' of FP8 weight '", name,
            "' ", shape_str(ti.shape), " with ", block.rows, "x", block.cols,
            " blocks: expected shape ", shape_str(want), ", file has ", shape_str(si.shape)));
      }
      if (!dtype_is_float(si.dtype)) {
        throw std::runtime_error(str_cat("scale tensor '", scale_name, "' in '", r.where(scale_name),
                                         "' has dtype ", dtype_name(si.dtype),
                                         ", expected a float dtype (F32)"));
      }
      const std::vector<float> scale = r.template read<float>(scale_name);
      for (std::size_t k = 0; k < scale.size(); ++k) {
        if (!(std::isfinite(scale[k]) && scale[k] > 0.0f)) {
          const auto scale_cols = static_cast<std::size_t>(want[1]);
          throw std::runtime_error(str_cat(
              "scale tensor '", scale_name, "' in '", r.where(scale_name), "' of FP8 weight '", name,
              "': element [", k / scale_cols, ", ", k % scale_cols, "] is ", scale[k],
              "; block scales must be finite and positive"));
        }
      }
      const std::vector<std::uint8_t> codes = r.read_bytes(name);
      dequantize_fp8_blockwise(codes.data(),
                               ti.dtype == Dtype::kF8E4M3 ? Fp8Format::kE4M3 : Fp8Format::kE5M2,
                               rows, cols, scale.data(), want[0], want[1], block, m.data());
      return m;
    }
  }
  r.read_into(name, m.data());
  return m;
}

}  // namespace tensor_io

/// The keys of a std::map (so in sorted order).
template <class Map>
std::vector<std::string> keys_of(const Map& m) {
  std::vector<std::string> out;
  out.reserve(m.size());
  for (const auto& kv : m) out.push_back(kv.first);
  return out;
}

}  // namespace internal

namespace io {

/// A validated .safetensors file (from a path or an in-memory buffer); see the header comment.
class SafetensorsFile {
 public:
  /// Largest accepted JSON header, as in the reference implementation (MAX_HEADER_SIZE).
  static constexpr std::uint64_t kMaxHeaderBytes = 100'000'000;

  /// Opens and validates `path`; keeps the header, reads tensor bytes on demand.
  explicit SafetensorsFile(const std::filesystem::path& path) : label_(path.string()) {
    auto src = std::make_shared<Source>();
    std::error_code ec;
    const auto status = std::filesystem::status(path, ec);
    if (ec || !std::filesystem::exists(status)) fail("file does not exist or cannot be accessed");
    if (!std::filesystem::is_regular_file(status)) fail("not a regular file");
    const std::uintmax_t size = std::filesystem::file_size(path, ec);
    if (ec) fail("cannot get the file size: ", ec.message());
    src->file.open(path, std::ios::binary);
    if (!src->file) fail("cannot open the file for reading");
    source_ = std::move(src);
    std::uint8_t len8[8] = {};
    if (size >= 8) source_->read(0, len8, 8, label_);
    const std::uint64_t n = check_lengths(size, len8);
    std::string header(static_cast<std::size_t>(n), '\0');
    if (n > 0) source_->read(8, header.data(), static_cast<std::size_t>(n), label_);
    parse_header(header.data(), header.size(), size - 8 - n);
  }

  /// Validates an in-memory file image (copied into the object). `label` names it in messages.
  static SafetensorsFile from_bytes(std::vector<std::uint8_t> bytes, std::string label = "<memory>") {
    SafetensorsFile f;
    f.label_ = std::move(label);
    auto src = std::make_shared<Source>();
    src->in_memory = true;
    src->memory = std::move(bytes);
    f.source_ = std::move(src);
    const std::vector<std::uint8_t>& mem = f.source_->memory;
    const std::uint64_t n = f.check_lengths(mem.size(), mem.data());
    f.parse_header(reinterpret_cast<const char*>(mem.data()) + 8, static_cast<std::size_t>(n),
                   mem.size() - 8 - n);
    return f;
  }
  static SafetensorsFile from_bytes(const void* data, std::size_t size, std::string label = "<memory>") {
    const auto* p = static_cast<const std::uint8_t*>(data);
    return from_bytes(std::vector<std::uint8_t>(p, p + size), std::move(label));
  }

  /// The path, or the label given to from_bytes.
  const std::string& label() const { return label_; }
  /// Where tensor `name` lives, for messages (the file label; the name is unused here).
  std::string where(const std::string& /*name*/) const { return label_; }

  bool contains(const std::string& name) const { return tensors_.count(name) != 0; }
  /// Tensor names, sorted.
  std::vector<std::string> names() const { return internal::keys_of(tensors_); }
  std::size_t size() const { return tensors_.size(); }
  /// Header entry of `name`; throws std::runtime_error naming the tensor and the file if absent.
  const TensorInfo& info(const std::string& name) const {
    const auto it = tensors_.find(name);
    if (it == tensors_.end()) {
      throw std::runtime_error(internal::str_cat("tensor '", name, "' not found in safetensors file '", label_,
                                       "' (", tensors_.size(), " tensors)"));
    }
    return it->second;
  }
  /// The "__metadata__" map (empty when the header has none).
  const std::map<std::string, std::string>& metadata() const { return metadata_; }
  /// File offset of the data block (8 + header length); a tensor's bytes start at data_offset() + begin.
  std::uint64_t data_offset() const { return data_start_; }

  /// Block size used by read_matrix for FP8 weights with a `_scale_inv` tensor (default 128 x 128).
  Fp8BlockSize fp8_block() const { return fp8_block_; }
  void set_fp8_block(Fp8BlockSize block) {
    MLA_CHECK_ARG(block.rows > 0 && block.cols > 0, "FP8 block size [", block.rows, ", ", block.cols,
                  "] must be positive");
    fp8_block_ = block;
  }

  /// Raw little-endian bytes of tensor `name` [nbytes].
  std::vector<std::uint8_t> read_bytes(const std::string& name) const {
    const TensorInfo& ti = info(name);
    std::vector<std::uint8_t> out(static_cast<std::size_t>(ti.nbytes()));
    if (!out.empty()) source_->read(data_start_ + ti.begin, out.data(), out.size(), label_);
    return out;
  }

  /// Converts tensor `name` into dst [numel] (row-major, as stored). FP8 is decoded unscaled.
  template <class T>
  void read_into(const std::string& name, T* dst) const {
    const TensorInfo& ti = info(name);
    const std::size_t esize = dtype_size(ti.dtype);
    const std::string context = internal::str_cat("safetensors file '", label_, "': tensor '", name, "'");
    if (ti.nbytes() == 0) return;
    const std::uint64_t offset = data_start_ + ti.begin;
    if (source_->in_memory) {
      internal::tensor_io::convert_elements(source_->memory.data() + offset, ti.dtype,
                                 static_cast<std::size_t>(ti.numel()), dst, context, 0);
      return;
    }
    if (internal::tensor_io::native_dtype<T>() == ti.dtype && ti.dtype != Dtype::kBool) {
      source_->read(offset, static_cast<void*>(dst), static_cast<std::size_t>(ti.nbytes()), label_);
      return;
    }
    // Convert in chunks so a large tensor never needs a second full-size buffer.
    constexpr std::size_t kChunkElems = 1 << 18;
    std::vector<std::uint8_t> buf;
    const std::size_t total = static_cast<std::size_t>(ti.numel());
    for (std::size_t first = 0; first < total; first += kChunkElems) {
      const std::size_t count = std::min(kChunkElems, total - first);
      buf.resize(count * esize);
      source_->read(offset + first * esize, buf.data(), buf.size(), label_);
      internal::tensor_io::convert_elements(buf.data(), ti.dtype, count, dst + first, context, first);
    }
  }

  /// All elements of tensor `name` converted to T, row-major [numel].
  template <class T>
  std::vector<T> read(const std::string& name) const {
    std::vector<T> out(static_cast<std::size_t>(info(name).numel()));
    read_into(name, out.data());
    return out;
  }
  /// As read(name), after checking that the stored shape equals expected_shape.
  template <class T>
  std::vector<T> read(const std::string& name, const std::vector<std::int64_t>& expected_shape) const {
    internal::tensor_io::check_shape(info(name), expected_shape, label_);
    return read<T>(name);
  }

  /// Tensor `name` as a [rows, cols] row-major matrix; the stored shape must be exactly [rows, cols].
  /// F8_E4M3/F8_E5M2 weights with a `<name>_scale_inv` tensor [ceil(rows/b), ceil(cols/b)] are
  /// dequantised: W[i, j] = fp8(W8[i, j]) * scale_inv[i / b.rows, j / b.cols] (b = fp8_block()).
  template <class Scalar>
  Matrix<Scalar> read_matrix(const std::string& name, Index rows, Index cols) const {
    return internal::tensor_io::read_matrix_from<Scalar>(*this, name, rows, cols, fp8_block_,
                                                         /*scales_required=*/false);
  }
  /// Tensor `name` as a vector; the stored shape must be exactly [n].
  template <class Scalar>
  Vector<Scalar> read_vector(const std::string& name, Index n) const {
    MLA_CHECK_ARG(n >= 0, "read_vector('", name, "'): negative length ", n);
    internal::tensor_io::check_shape(info(name), {n}, label_);
    Vector<Scalar> v(n);
    read_into(name, v.data());
    return v;
  }
  /// A 0-d tensor (shape []) as a T.
  template <class T>
  T read_scalar(const std::string& name) const {
    internal::tensor_io::check_shape(info(name), {}, label_);
    T v{};
    read_into(name, &v);
    return v;
  }

 private:
  // Bytes of the file: an owned buffer, or a stream read under a mutex.
  struct Source {
    bool in_memory = false;
    std::vector<std::uint8_t> memory;
    std::ifstream file;
    std::mutex mu;

    void read(std::uint64_t offset, void* dst, std::size_t n, const std::string& label) {
      if (in_memory) {
        std::memcpy(dst, memory.data() + offset, n);
        return;
      }
      std::lock_guard<std::mutex> lock(mu);
      file.clear();
      file.seekg(static_cast<std::streamoff>(offset));
      file.read(static_cast<char*>(dst), static_cast<std::streamsize>(n));
      if (!file || static_cast<std::size_t>(file.gcount()) != n) {
        file.clear();
        throw std::runtime_error(internal::str_cat("safetensors file '", label, "': short read of ", n,
                                         " bytes at offset ", offset,
                                         " (was the file truncated or changed after opening?)"));
      }
    }
  };

  SafetensorsFile() = default;

  template <class... Args>
  [[noreturn]] void fail(const Args&... args) const {
    throw std::runtime_error(internal::str_cat("safetensors file '", label_, "': ", args...));
  }

  // Checks the 8-byte length against the file size; returns the header length N.
  std::uint64_t check_lengths(std::uint64_t file_size, const std::uint8_t* first8) const {
    if (file_size < 8) fail("file is ", file_size, " bytes, shorter than the 8-byte header length");
    std::uint64_t n = 0;
    for (int i = 7; i >= 0; --i) n = (n << 8) | first8[i];
    if (n > kMaxHeaderBytes) {
      fail("header length ", n, " exceeds the limit of ", kMaxHeaderBytes, " bytes (file size ",
           file_size, ")");
    }
    if (n > file_size - 8) {
      fail("header length ", n, " runs past the end of the file (file size ", file_size, ")");
    }
    return n;
  }

  // A JSON value that must be a non-negative integer: `field` (e.g. "'shape'") of tensor `t`.
  // Messages are built only on failure (this runs a few times per entry).
  std::uint64_t get_uint(const nlohmann::json& v, const char* field, const std::string& t) const {
    if (v.is_number_unsigned()) return v.get<std::uint64_t>();
    if (v.is_number_integer()) fail(field, " of ", t, " has a negative value ", v.get<std::int64_t>());
    if (v.is_number_float()) fail(field, " of ", t, " has a non-integer value ", json_excerpt(v));
    fail(field, " of ", t, " has a non-number value ", json_excerpt(v));
  }

  TensorInfo parse_entry(const std::string& name, const nlohmann::json& e,
                         std::uint64_t data_size) const {
    TensorInfo ti;
    ti.name = name;
    const std::string t = "tensor '" + name + "'";  // for messages
    if (!e.is_object()) fail("entry of ", t, " is not a JSON object: ", json_excerpt(e));
    for (const char* key : {"dtype", "shape", "data_offsets"}) {
      if (!e.contains(key)) fail(t, " has no '", key, "' field");
    }
    const nlohmann::json& jd = e["dtype"];
    if (!jd.is_string()) fail("'dtype' of ", t, " is not a string: ", json_excerpt(jd));
    const std::optional<Dtype> d = dtype_from_name(jd.get_ref<const std::string&>());
    if (!d) fail(t, " has unknown dtype ", json_excerpt(jd));
    ti.dtype = *d;

    const nlohmann::json& js = e["shape"];
    if (!js.is_array()) fail("'shape' of ", t, " is not a list: ", json_excerpt(js));
    std::uint64_t numel = 1;
    for (const nlohmann::json& dim : js) {
      const std::uint64_t v = get_uint(dim, "'shape'", t);
      if (v > static_cast<std::uint64_t>(std::numeric_limits<std::int64_t>::max()) ||
          (v != 0 && numel > std::numeric_limits<std::uint64_t>::max() / v)) {
        fail("shape ", json_excerpt(js), " of ", t, " overflows a 64-bit element count");
      }
      numel *= v;
      ti.shape.push_back(static_cast<std::int64_t>(v));
    }
    const std::uint64_t esize = dtype_size(ti.dtype);
    if (numel > std::numeric_limits<std::uint64_t>::max() / esize) {
      fail("shape ", json_excerpt(js), " of ", t, " overflows a 64-bit byte count");
    }

    const nlohmann::json& jo = e["data_offsets"];
    if (!jo.is_array() || jo.size() != 2) {
      fail("'data_offsets' of ", t, " is not a list of two integers: ", json_excerpt(jo));
    }
    ti.begin = get_uint(jo[0], "'data_offsets'", t);
    ti.end = get_uint(jo[1], "'data_offsets'", t);
    if (ti.begin > ti.end) fail("data_offsets [", ti.begin, ", ", ti.end, "] of ", t, " have begin > end");
    if (ti.end > data_size) {
      fail("data_offsets [", ti.begin, ", ", ti.end, "] of ", t, " exceed the data block of ",
           data_size, " bytes");
    }
    if (ti.nbytes() != numel * esize) {
      fail(t, " has shape ", internal::shape_str(ti.shape), " and dtype ", dtype_name(ti.dtype), " (",
           numel * esize, " bytes) but data_offsets [", ti.begin, ", ", ti.end, "] span ",
           ti.nbytes(), " bytes");
    }
    return ti;
  }

  void parse_header(const char* text, std::size_t n, std::uint64_t data_size) {
    data_start_ = 8 + n;
    // Each entry is validated as soon as the parser has read it (mla/io/json.hpp: duplicate keys,
    // which would make the file ambiguous, and deep nesting are refused on the way), so the
    // header never exists as one DOM.
    std::vector<const TensorInfo*> by_offset;
    parse_json_members(
        text, n, internal::str_cat("safetensors file '", label_, "': header"),
        [&](const std::string& key, const nlohmann::json& value) {
          if (key == "__metadata__") {
            if (!value.is_object()) fail("__metadata__ is not a JSON object: ", json_excerpt(value));
            for (auto m = value.begin(); m != value.end(); ++m) {
              if (!m->is_string()) {
                fail("__metadata__ value of key '", m.key(), "' is not a string: ", json_excerpt(*m));
              }
              metadata_[m.key()] = m->get<std::string>();
            }
            return;
          }
          TensorInfo ti = parse_entry(key, value, data_size);
          by_offset.push_back(&(tensors_[key] = std::move(ti)));
        });

    // The spec requires a fully indexed data block: tensors tile [0, data_size) with no overlap,
    // no hole and nothing after the last one.
    std::sort(by_offset.begin(), by_offset.end(), [](const TensorInfo* a, const TensorInfo* b) {
      return std::tie(a->begin, a->end, a->name) < std::tie(b->begin, b->end, b->name);
    });
    std::uint64_t covered = 0;
    const TensorInfo* prev = nullptr;
    for (const TensorInfo* ti : by_offset) {
      if (ti->begin < covered) {
        fail("tensors '", prev->name, "' (bytes [", prev->begin, ", ", prev->end, ")) and '", ti->name,
             "' (bytes [", ti->begin, ", ", ti->end, ")) overlap");
      }
      if (ti->begin > covered) {
        fail("bytes [", covered, ", ", ti->begin,
             ") of the data block are not covered by any tensor (the format requires a fully "
             "indexed data block)");
      }
      covered = ti->end;
      prev = ti;
    }
    if (covered != data_size) {
      fail("bytes [", covered, ", ", data_size,
           ") of the data block are not covered by any tensor (trailing data after the last tensor; "
           "the format requires a fully indexed data block)");
    }
  }

  std::string label_;
  std::shared_ptr<Source> source_;
  std::map<std::string, TensorInfo> tensors_;
  std::map<std::string, std::string> metadata_;
  std::uint64_t data_start_ = 0;
  Fp8BlockSize fp8_block_;
};

/// Builds a valid .safetensors image: tensors are laid out in the order they are added, the header
/// keeps that order and is padded with spaces to a multiple of 8 bytes (as the reference writer
/// does), so every tensor starts 8-byte aligned. Meant for tests, examples and fuzz corpora; it
/// holds a copy of every tensor. Inconsistent sizes throw std::invalid_argument.
class SafetensorsWriter {
 public:
  /// Adds raw little-endian bytes [nbytes] with an explicit dtype (FP8 codes, hand-made F16 bits).
  SafetensorsWriter& add_raw(const std::string& name, Dtype dtype, std::vector<std::int64_t> shape,
                             const void* data, std::size_t nbytes) {
    MLA_CHECK_ARG(name != "__metadata__", "SafetensorsWriter: '__metadata__' is not a tensor name");
    MLA_CHECK_ARG(names_.count(name) == 0, "SafetensorsWriter: tensor '", name, "' added twice");
    std::uint64_t numel = 1;
    for (std::int64_t d : shape) {
      MLA_CHECK_ARG(d >= 0, "SafetensorsWriter: tensor '", name, "' has negative dim in ",
                    internal::shape_str(shape));
      numel *= static_cast<std::uint64_t>(d);
    }
    MLA_CHECK_ARG(numel * dtype_size(dtype) == nbytes, "SafetensorsWriter: tensor '", name,
                  "' shape ", internal::shape_str(shape), " ", dtype_name(dtype), " needs ",
                  numel * dtype_size(dtype), " bytes, got ", nbytes);
    Entry e{name, dtype, std::move(shape), std::vector<std::uint8_t>(nbytes)};
    if (nbytes > 0) std::memcpy(e.bytes.data(), data, nbytes);
    entries_.push_back(std::move(e));
    names_.insert(name);
    return *this;
  }
  /// Adds numel(shape) values of T; the dtype follows T (float F32, double F64, Eigen::bfloat16
  /// BF16, Eigen::half F16, int64_t I64, int32_t I32, uint8_t U8, bool BOOL, ...).
  template <class T>
  SafetensorsWriter& add(const std::string& name, std::vector<std::int64_t> shape, const T* data) {
    constexpr std::optional<Dtype> d = internal::tensor_io::native_dtype<T>();
    static_assert(d.has_value(), "SafetensorsWriter::add: no safetensors dtype for this type");
    static_assert(sizeof(bool) == 1 || !std::is_same<T, bool>::value, "BOOL needs a 1-byte bool");
    std::uint64_t numel = 1;
    for (std::int64_t dim : shape) numel *= static_cast<std::uint64_t>(dim < 0 ? 0 : dim);
    return add_raw(name, *d, std::move(shape), data, numel * sizeof(T));
  }
  template <class T>
  SafetensorsWriter& add(const std::string& name, std::vector<std::int64_t> shape,
                         const std::vector<T>& data) {
    std::uint64_t numel = 1;
    for (std::int64_t dim : shape) numel *= static_cast<std::uint64_t>(dim < 0 ? 0 : dim);
    MLA_CHECK_ARG(numel == data.size(), "SafetensorsWriter: tensor '", name, "' shape ",
                  internal::shape_str(shape), " has ", numel, " elements, data has ", data.size());
    return add(name, std::move(shape), data.data());
  }
  /// Adds an Eigen matrix as [rows, cols] (row-major), or a compile-time vector as [n].
  template <class Derived>
  SafetensorsWriter& add_eigen(const std::string& name, const Eigen::MatrixBase<Derived>& m) {
    using S = typename Derived::Scalar;
    if constexpr (Derived::ColsAtCompileTime == 1 || Derived::RowsAtCompileTime == 1) {
      const Vector<S> v = m.reshaped();
      return add(name, {static_cast<std::int64_t>(v.size())}, v.data());
    } else {
      const Matrix<S> rm = m;
      return add(name, {static_cast<std::int64_t>(rm.rows()), static_cast<std::int64_t>(rm.cols())},
                 rm.data());
    }
  }
  /// Adds a 0-d tensor (shape []).
  template <class T>
  SafetensorsWriter& add_scalar(const std::string& name, T value) {
    return add(name, {}, &value);
  }
  SafetensorsWriter& set_metadata(const std::string& key, const std::string& value) {
    metadata_[key] = value;
    return *this;
  }

  /// The complete file image.
  std::vector<std::uint8_t> to_bytes() const {
    // Compact JSON written entry by entry (an ordered_json would search its keys on every insert).
    const auto quoted = [](const std::string& s) { return nlohmann::json(s).dump(); };
    std::string text = "{";
    if (!metadata_.empty()) {
      text += "\"__metadata__\":{";
      for (auto it = metadata_.begin(); it != metadata_.end(); ++it) {
        text += (it == metadata_.begin() ? "" : ",") + quoted(it->first) + ":" + quoted(it->second);
      }
      text += "}";
    }
    std::uint64_t offset = 0;
    for (const Entry& e : entries_) {
      if (text.size() > 1) text += ',';
      text += quoted(e.name) + ":{\"dtype\":\"" + dtype_name(e.dtype) + "\",\"shape\":[";
      for (std::size_t i = 0; i < e.shape.size(); ++i) {
        text += (i ? "," : "") + std::to_string(e.shape[i]);
      }
      text += "],\"data_offsets\":[" + std::to_string(offset) + "," +
              std::to_string(offset + e.bytes.size()) + "]}";
      offset += e.bytes.size();
    }
    text += "}";
    text.append((8 - text.size() % 8) % 8, ' ');
    std::vector<std::uint8_t> out(8 + text.size() + offset);
    const std::uint64_t n = text.size();
    for (int i = 0; i < 8; ++i) out[i] = static_cast<std::uint8_t>(n >> (8 * i));
    std::memcpy(out.data() + 8, text.data(), text.size());
    std::size_t pos = 8 + text.size();
    for (const Entry& e : entries_) {
      if (!e.bytes.empty()) std::memcpy(out.data() + pos, e.bytes.data(), e.bytes.size());
      pos += e.bytes.size();
    }
    return out;
  }
  /// Writes the file image to `path` (replacing it); throws std::runtime_error on I/O failure.
  void write(const std::filesystem::path& path) const {
    const std::vector<std::uint8_t> bytes = to_bytes();
    std::ofstream out(path, std::ios::binary | std::ios::trunc);
    out.write(reinterpret_cast<const char*>(bytes.data()), static_cast<std::streamsize>(bytes.size()));
    out.close();
    MLA_CHECK_DATA(out.good(), "SafetensorsWriter: cannot write '", path.string(), "'");
  }

 private:
  struct Entry {
    std::string name;
    Dtype dtype;
    std::vector<std::int64_t> shape;
    std::vector<std::uint8_t> bytes;
  };
  std::vector<Entry> entries_;
  std::set<std::string> names_;  // of entries_, for the duplicate check
  std::map<std::string, std::string> metadata_;
};

}  // namespace io
}  // namespace mla
