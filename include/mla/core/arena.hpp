// Aligned scratch for the kernels: an owning 64-byte aligned float buffer that only grows, and an
// arena that carves consecutive aligned regions out of one such buffer.
#pragma once

#include <cstddef>
#include <new>

#include "mla/core/types.hpp"

namespace mla {
namespace internal {

/// Rounds n up to a multiple of `to` (a power of two).
constexpr Index round_up(Index n, Index to) { return (n + to - 1) & ~(to - 1); }

/// Owning 64-byte aligned float buffer that only ever grows; no Eigen or std::vector so that
/// growth is the one place a kernel workspace allocates.
class AlignedFloats {
 public:
  AlignedFloats() = default;
  AlignedFloats(const AlignedFloats&) = delete;
  AlignedFloats& operator=(const AlignedFloats&) = delete;
  AlignedFloats(AlignedFloats&& o) noexcept : data_(o.data_), size_(o.size_) {
    o.data_ = nullptr;
    o.size_ = 0;
  }
  AlignedFloats& operator=(AlignedFloats&& o) noexcept {
    if (this != &o) {
      release();
      data_ = o.data_;
      size_ = o.size_;
      o.data_ = nullptr;
      o.size_ = 0;
    }
    return *this;
  }
  ~AlignedFloats() { release(); }

  /// Makes room for at least n floats (contents are not kept when it grows).
  void grow(Index n) {
    if (n <= size_) return;
    release();
    data_ = static_cast<float*>(::operator new(static_cast<std::size_t>(n) * sizeof(float),
                                               std::align_val_t(64)));
    size_ = n;
  }
  float* data() const { return data_; }
  Index size() const { return size_; }

 private:
  void release() {
    if (data_ != nullptr) ::operator delete(data_, std::align_val_t(64));
    data_ = nullptr;
    size_ = 0;
  }
  float* data_ = nullptr;
  Index size_ = 0;
};

/// Carves consecutive 64-byte aligned float regions out of one buffer; used twice per call,
/// once to size a workspace and once to lay it out, so the two can not disagree.
class FloatArena {
 public:
  explicit FloatArena(float* base = nullptr) : base_(base) {}
  float* take(Index n) {
    float* p = base_ == nullptr ? nullptr : base_ + used_;
    used_ += round_up(n, 16);
    return p;
  }
  Index used() const { return used_; }

 private:
  float* base_;
  Index used_ = 0;
};

}  // namespace internal
}  // namespace mla
