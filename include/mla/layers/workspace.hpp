// Scratch memory for one forward call. Layers take every temporary buffer from a Workspace the
// caller owns (one per thread or sequence, the layer itself stays immutable and shareable), so a
// decode step allocates nothing once the workspace has seen a step of that size: the first call
// may add chunks, the next reset() merges them into one block big enough for the whole call, and
// from then on take() only bumps an offset.
//
// It also carries what a call needs besides memory: the scratch of the fast decode kernels
// (which size themselves on first use and are reused afterwards) and the thread pool the
// attention kernels and the projections (GEMMs) may use (none by default: the calling thread
// does all the work). It lives at the layer level because it owns the kernels' workspaces.
#pragma once

#include <algorithm>
#include <cstddef>
#include <cstdint>
#include <initializer_list>
#include <limits>
#include <memory>
#include <new>
#include <vector>

#include "mla/core/check.hpp"
#include "mla/core/threading.hpp"
#include "mla/core/types.hpp"
#include "mla/kernels/decode_engine.hpp"
#include "mla/kernels/gemm.hpp"

namespace mla {

class Workspace {
 public:
  Workspace() = default;
  explicit Workspace(std::size_t bytes) { reserve(bytes); }
  Workspace(const Workspace&) = delete;
  Workspace& operator=(const Workspace&) = delete;
  Workspace(Workspace&&) = default;
  Workspace& operator=(Workspace&&) = default;

  /// Makes sure one block of at least `bytes` exists (allocates now rather than in a hot call).
  void reserve(std::size_t bytes) {
    if (chunks_.size() == 1 && chunks_[0].size >= bytes) return;
    chunks_.clear();
    add_chunk(bytes);
    offset_ = 0;
  }

  /// Releases everything taken since the last reset. If the last call needed more than one
  /// block, they are merged into one block of the total size (the only allocation after
  /// warm-up, and only after a call that was bigger than any before it).
  void reset() {
    if (chunks_.size() > 1) {
      std::size_t total = 0;
      for (const Chunk& c : chunks_) total += c.size;
      chunks_.clear();
      add_chunk(total);
    }
    current_ = 0;
    offset_ = 0;
  }

  /// `n` uninitialised elements of T, 64-byte aligned, valid until the next reset().
  /// Throws std::invalid_argument when n * sizeof(T) does not fit in the address space.
  template <class T>
  T* take(std::size_t n) {
    MLA_CHECK_ARG(n <= (std::numeric_limits<std::size_t>::max() - kAlign) / sizeof(T),
                  "Workspace::take: ", n, " elements of ", sizeof(T),
                  " bytes overflow the address space");
    const std::size_t bytes = (n * sizeof(T) + kAlign - 1) / kAlign * kAlign;
    if (chunks_.empty() || offset_ + bytes > chunks_[current_].size) {
      // Move on to a later chunk with room, else add one.
      std::size_t next = chunks_.empty() ? 0 : current_ + 1;
      while (next < chunks_.size() && chunks_[next].size < bytes) ++next;
      if (next >= chunks_.size()) {
        add_chunk(std::max<std::size_t>(bytes, kMinChunk));
        next = chunks_.size() - 1;
      }
      current_ = next;
      offset_ = 0;
    }
    void* p = chunks_[current_].data.get() + offset_;
    offset_ += bytes;
    return static_cast<T*>(p);
  }

  /// The product of `dims` elements of T (e.g. {tokens, heads, width}), the product checked
  /// for overflow (std::invalid_argument naming the dims).
  template <class T>
  T* take(std::initializer_list<std::int64_t> dims) {
    return take<T>(static_cast<std::size_t>(
        internal::checked_elements<T>("Workspace::take: buffer of dims", dims)));
  }

  /// A [rows, cols] row-major matrix view on workspace memory.
  template <class Scalar>
  MatrixMap<Scalar> matrix(Index rows, Index cols) {
    return MatrixMap<Scalar>(take<Scalar>({rows, cols}), rows, cols);
  }

  /// Bytes held by the arena and the kernel scratch.
  std::size_t bytes_reserved() const {
    std::size_t total = absorbed_kernel.bytes() + gqa_kernel.bytes() + gemm_kernel.bytes();
    for (const Chunk& c : chunks_) total += c.size;
    return total;
  }

  /// Threads the attention kernels and GEMMs may use; nullptr (default) = the calling thread. The
  /// pool is borrowed, not owned, and must outlive the calls that use it.
  void set_thread_pool(ThreadPool* pool) { pool_ = pool; }
  ThreadPool* thread_pool() const { return pool_; }

  /// Scratch of the fast kernels (grown on first use, then reused); absorbed_kernel also holds
  /// the MLA decode engine's plan, reused while the shapes stay the same.
  kernels::DecodeWorkspace absorbed_kernel;
  kernels::DecodeWorkspace gqa_kernel;
  kernels::GemmWorkspace gemm_kernel;
  /// How the MLA decode engine splits a batch across threads (mla_decode_batch).
  kernels::BatchedDecodeOptions decode_options{};

 private:
  static constexpr std::size_t kAlign = 64;
  static constexpr std::size_t kMinChunk = 1 << 16;
  struct AlignedDelete {
    void operator()(std::byte* p) const { ::operator delete[](p, std::align_val_t(kAlign)); }
  };
  struct Chunk {
    std::unique_ptr<std::byte[], AlignedDelete> data;
    std::size_t size = 0;
  };
  void add_chunk(std::size_t bytes) {
    Chunk c;
    c.data.reset(static_cast<std::byte*>(::operator new[](bytes, std::align_val_t(kAlign))));
    c.size = bytes;
    chunks_.push_back(std::move(c));
  }

  std::vector<Chunk> chunks_;
  ThreadPool* pool_ = nullptr;
  std::size_t current_ = 0;
  std::size_t offset_ = 0;
};

}  // namespace mla
