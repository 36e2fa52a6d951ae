// Paged MLA latent cache (vLLM's PagedAttention, FlashMLA's block table): one pool of fixed-size
// blocks of latent rows shared by many sequences, and per sequence a block table listing the
// blocks that hold its tokens in order,
//
//   token t of a sequence = row (t % block_size) of block block_table[t / block_size],
//   row = [c_kv (kv_lora_rank) | k_pe (qk_rope_head_dim)]
//   (float or bf16 values; V3 rows of Fp8Latent are 656 bytes, of Int8Latent 648)
//
// so sequences grow a block at a time without reserving their maximum length up front, and
// freed blocks serve other sequences. The default block is 64 tokens, the size FlashMLA
// requires; any size >= 1 works.
//
// Also here: latent_rows(cache), the decode engine's view of a cache's rows
// (mla/kernels/latent_rows.hpp), for a paged cache, a contiguous LatentCache or an 8-bit cache
// alike (a contiguous cache is a single block).
//
// Ownership: LatentBlockPool owns the memory; a PagedLatentCache borrows blocks from one pool and
// returns them when released or destroyed (the pool must outlive its caches). Neither is
// thread-safe: allocate and free from one thread (the engine's scheduler); decoding only reads.
#pragma once

#include <algorithm>
#include <cstdint>
#include <limits>
#include <optional>
#include <ostream>
#include <stdexcept>
#include <string>
#include <type_traits>
#include <utility>
#include <vector>

#include "mla/cache/latent_cache.hpp"
#include "mla/cache/quantized_latent_cache.hpp"
#include "mla/kernels/latent_rows.hpp"
#include "mla/cache/cache_checks.hpp"
#include "mla/core/check.hpp"
#include "mla/core/types.hpp"

namespace mla {

namespace internal {
/// The rows of a contiguous cache (LatentCache or an 8-bit cache) as a view: a single block.
template <class Cache>
LatentRowsView<typename Cache::Element> contiguous_rows(const Cache& cache) {
  LatentRowsView<typename Cache::Element> v;
  v.base = cache.data();
  v.row_stride = cache.row_stride();
  v.len = cache.size();
  v.kv_lora_rank = cache.kv_lora_rank();
  v.rope_dim = cache.rope_dim();
  return v;
}
}  // namespace internal

/// The rows of a contiguous LatentCache as a view.
template <class T>
LatentRowsView<T> latent_rows(const LatentCache<T>& cache) {
  return internal::contiguous_rows(cache);
}

/// The rows of a contiguous 8-bit cache (Fp8LatentCache, Int8LatentCache) as a view.
template <class T>
LatentRowsView<T> latent_rows(const QuantizedLatentCache<T>& cache) {
  return internal::contiguous_rows(cache);
}

/// Thrown when a pool has fewer free blocks than asked for. It is an std::invalid_argument like
/// every cache overflow in mla; engines catch this type to preempt or queue a sequence.
class BlockPoolExhausted : public std::invalid_argument {
 public:
  explicit BlockPoolExhausted(const std::string& what) : std::invalid_argument(what) {}
};

/// A pool of `num_blocks` blocks of `block_size` latent rows of element type T, in one
/// allocation: block b is rows [b * block_size, (b + 1) * block_size) of the storage.
template <class T>
class LatentBlockPool {
 public:
  using Element = T;
  using Unit = typename LatentRowCodec<T>::Unit;  // what a row is stored in

  LatentBlockPool(Index kv_lora_rank, Index qk_rope_head_dim, Index num_blocks,
                  Index block_size = kDefaultBlockSize)
      : kv_lora_rank_(kv_lora_rank), rope_dim_(qk_rope_head_dim), block_size_(block_size) {
    MLA_CHECK_ARG(kv_lora_rank > 0 && qk_rope_head_dim >= 0, "LatentBlockPool: kv_lora_rank (",
                  kv_lora_rank, ") must be positive and qk_rope_head_dim (", qk_rope_head_dim,
                  ") non-negative");
    MLA_CHECK_ARG(block_size >= 1, "LatentBlockPool: block_size (", block_size, ") must be >= 1");
    row_units_ = LatentRowCodec<T>::row_units(kv_lora_rank, qk_rope_head_dim);
    internal::checked_mul("LatentBlockPool: block units block_size * row units",
                          {block_size, row_units_});
    grow(num_blocks);
  }
  LatentBlockPool(const LatentBlockPool&) = delete;
  LatentBlockPool& operator=(const LatentBlockPool&) = delete;

  Index kv_lora_rank() const { return kv_lora_rank_; }
  Index rope_dim() const { return rope_dim_; }
  Index block_size() const { return block_size_; }
  Index num_blocks() const { return num_blocks_; }
  Index num_free() const { return static_cast<Index>(free_.size()); }
  Index num_used() const { return num_blocks_ - num_free(); }
  /// Storage units per row and per block.
  Index row_units() const { return row_units_; }
  Index block_units() const { return block_size_ * row_units_; }
  /// Exact bytes one token occupies (a row; 2304 / 1152 / 656 for V3 float / bf16 / FP8).
  std::size_t bytes_per_token() const { return static_cast<std::size_t>(row_units_) * sizeof(Unit); }
  std::size_t bytes_allocated() const { return data_.capacity() * sizeof(Unit); }

  /// Explicit growth to `new_num_blocks` blocks (never shrinks). Block ids and contents stay,
  /// but the storage may move: views and row pointers taken before are invalid afterwards.
  void grow(Index new_num_blocks) {
    MLA_CHECK_ARG(new_num_blocks >= 0 && new_num_blocks <= std::numeric_limits<std::int32_t>::max(),
                  "LatentBlockPool::grow: num_blocks (", new_num_blocks,
                  ") must be in [0, 2^31)");
    if (new_num_blocks <= num_blocks_) return;
    data_.resize(static_cast<std::size_t>(internal::checked_elements<Unit>(
        "LatentBlockPool::grow: num_blocks * block_size * row units",
        {new_num_blocks, block_size_, row_units_})));
    in_use_.resize(static_cast<std::size_t>(new_num_blocks), 0);
    free_.reserve(static_cast<std::size_t>(new_num_blocks));
    // The free list is a stack; pushing the new ids in descending order hands them out in
    // ascending order, so a sequence that grows alone gets physically adjacent blocks.
    std::vector<std::int32_t> old(free_.begin(), free_.end());
    free_.clear();
    for (Index b = new_num_blocks - 1; b >= num_blocks_; --b) free_.push_back(std::int32_t(b));
    free_.insert(free_.end(), old.begin(), old.end());
    num_blocks_ = new_num_blocks;
  }

  /// A free block's id, or nothing when the pool is exhausted.
  std::optional<std::int32_t> try_allocate() {
    if (free_.empty()) return std::nullopt;
    const std::int32_t b = free_.back();
    free_.pop_back();
    in_use_[std::size_t(b)] = 1;
    return b;
  }
  /// A free block's id; throws BlockPoolExhausted when there is none.
  std::int32_t allocate() {
    check_free(1);
    return *try_allocate();
  }
  /// `n` free blocks appended to `ids`, all or nothing (BlockPoolExhausted leaves the pool and
  /// `ids` unchanged).
  void allocate(Index n, std::vector<std::int32_t>& ids) {
    MLA_CHECK_ARG(n >= 0, "LatentBlockPool::allocate: block count (", n, ") is negative");
    check_free(n);
    ids.reserve(ids.size() + static_cast<std::size_t>(n));  // may throw; the pool is untouched
    for (Index i = 0; i < n; ++i) ids.push_back(*try_allocate());
  }
  /// Returns block `id` to the pool. Throws std::invalid_argument for an id outside the pool or
  /// a block that is not allocated (double free).
  void free(std::int32_t id) {
    MLA_CHECK_ARG(id >= 0 && id < num_blocks_, "LatentBlockPool::free: block id ", id,
                  " is outside the pool (", num_blocks_, " blocks)");
    MLA_CHECK_ARG(in_use_[std::size_t(id)] != 0, "LatentBlockPool::free: block ", id,
                  " is not allocated (freed twice?)");
    in_use_[std::size_t(id)] = 0;
    free_.push_back(id);
  }
  bool is_allocated(std::int32_t id) const {
    return id >= 0 && id < num_blocks_ && in_use_[std::size_t(id)] != 0;
  }

  /// Throws BlockPoolExhausted unless `n` blocks are free.
  void check_free(Index n) const {
    if (n > num_free())
      throw BlockPoolExhausted(internal::str_cat(
          "LatentBlockPool exhausted: ", n, " block(s) of ", block_size_, " tokens needed, ",
          num_free(), " of ", num_blocks_, " free; free sequences or grow() the pool"));
  }

  /// Block `id`'s rows: [block_size, row_units] units.
  Unit* block_data(std::int32_t id) { return data_.data() + Index(id) * block_units(); }
  const Unit* block_data(std::int32_t id) const { return data_.data() + Index(id) * block_units(); }
  const Unit* data() const { return data_.data(); }

 private:
  Index kv_lora_rank_ = 0, rope_dim_ = 0, block_size_ = 0, row_units_ = 0, num_blocks_ = 0;
  std::vector<Unit> data_;               // [num_blocks, block_size, row_units]
  std::vector<std::int32_t> free_;       // stack of free ids
  std::vector<std::uint8_t> in_use_;     // per block: 1 while allocated
};

/// One sequence's latent cache in a LatentBlockPool: LatentCache's interface (size, capacity,
/// explicit reserve(), append of rows [c_kv | k_pe], truncate) with storage borrowed from the pool
/// one block at a time. append() never allocates: reserve() first (it takes blocks from the
/// pool, or throws BlockPoolExhausted and changes nothing).
template <class T>
class PagedLatentCache {
 public:
  using Element = T;
  using Unit = typename LatentRowCodec<T>::Unit;  // what a row is stored in

  PagedLatentCache() = default;
  explicit PagedLatentCache(LatentBlockPool<T>& pool, Index capacity = 0) : pool_(&pool) {
    reserve(capacity);
  }
  PagedLatentCache(const PagedLatentCache&) = delete;
  PagedLatentCache& operator=(const PagedLatentCache&) = delete;
  PagedLatentCache(PagedLatentCache&& o) noexcept
      : pool_(std::exchange(o.pool_, nullptr)), table_(std::move(o.table_)),
        size_(std::exchange(o.size_, 0)) {
    o.table_.clear();
  }
  PagedLatentCache& operator=(PagedLatentCache&& o) noexcept {
    if (this != &o) {
      release();
      pool_ = std::exchange(o.pool_, nullptr);
      table_ = std::move(o.table_);
      o.table_.clear();
      size_ = std::exchange(o.size_, 0);
    }
    return *this;
  }
  ~PagedLatentCache() { release(); }

  bool has_pool() const { return pool_ != nullptr; }
  const LatentBlockPool<T>& pool() const { return *pool_; }
  /// Widths and block size of the pool (0 for a default-constructed cache without one).
  Index kv_lora_rank() const { return pool_ == nullptr ? 0 : pool_->kv_lora_rank(); }
  Index rope_dim() const { return pool_ == nullptr ? 0 : pool_->rope_dim(); }
  /// Values per row: kv_lora_rank + qk_rope_head_dim.
  Index row_dim() const { return kv_lora_rank() + rope_dim(); }
  Index block_size() const { return pool_ == nullptr ? 0 : pool_->block_size(); }
  Index size() const { return size_; }
  /// Tokens the blocks held can take: num_blocks() * block_size().
  Index capacity() const { return pool_ == nullptr ? 0 : num_blocks() * block_size(); }
  Index num_blocks() const { return static_cast<Index>(table_.size()); }
  /// Block ids in token order.
  const std::vector<std::int32_t>& block_table() const { return table_; }
  std::size_t bytes_per_token() const { return pool_ == nullptr ? 0 : pool_->bytes_per_token(); }

  /// Explicit growth: takes blocks from the pool until capacity() >= `tokens`. All or nothing:
  /// BlockPoolExhausted leaves the cache and the pool unchanged.
  void reserve(Index tokens) {
    internal::check_cache_reserve("PagedLatentCache", tokens);
    MLA_CHECK_ARG(pool_ != nullptr || tokens == 0,
                  "PagedLatentCache::reserve: the cache has no pool (default-constructed)");
    if (tokens <= capacity()) return;
    const Index bs = block_size();
    const Index need = tokens / bs + (tokens % bs != 0) - num_blocks();
    pool_->allocate(need, table_);
  }
  /// reserve(size() + n): room for `n` more tokens (`n` >= 0).
  void ensure_room(Index n) {
    reserve(internal::checked_add("PagedLatentCache::ensure_room: size + n", {size_, n}));
  }
  void check_room(Index n) const {
    MLA_CHECK_ARG(n >= 0 && n <= capacity() - size_, "PagedLatentCache overflow: appending ", n,
                  " tokens to ", size_, " stored with capacity ", capacity(), " (", num_blocks(),
                  " blocks of ", block_size(),
                  "); call reserve() or ensure_room() to take more blocks");
  }

  /// Appends `n` rows; `src` is [n, row_dim()] with `src_stride` elements between rows, laid out
  /// as [c_kv | k_pe] (converted, or quantised for Fp8Latent and Int8Latent). Needs room (check_room()).
  template <class Src>
  void append(const Src* src, Index src_stride, Index n) {
    check_room(n);
    for (Index t = 0; t < n; ++t)
      LatentRowCodec<T>::encode(src + t * src_stride, kv_lora_rank(), rope_dim(), row(size_ + t));
    size_ += n;
  }

  /// Forgets all tokens, keeping the blocks.
  void clear() { size_ = 0; }
  /// Drops tokens past `new_size` (e.g. rejected speculative tokens), keeping the blocks.
  void truncate(Index new_size) {
    internal::check_cache_truncate("PagedLatentCache", new_size, size_);
    size_ = new_size;
  }
  /// Returns the blocks past the ones size() needs to the pool.
  void shrink_to_fit() {
    if (pool_ == nullptr) return;
    const Index keep = (size_ + block_size() - 1) / block_size();
    while (num_blocks() > keep) {
      pool_->free(table_.back());
      table_.pop_back();
    }
  }
  /// Returns every block to the pool; the cache is then empty with capacity 0.
  void release() {
    if (pool_ != nullptr)
      for (std::int32_t b : table_) pool_->free(b);
    table_.clear();
    size_ = 0;
  }

  /// Row t: [row_units] storage units (t < capacity()).
  Unit* row(Index t) {
    return pool_->block_data(table_[std::size_t(t / block_size())]) +
           (t % block_size()) * pool_->row_units();
  }
  const Unit* row(Index t) const {
    return pool_->block_data(table_[std::size_t(t / block_size())]) +
           (t % block_size()) * pool_->row_units();
  }

  /// The decode kernels' view of the size() rows (see LatentRowsView for its lifetime).
  LatentRowsView<T> rows() const {
    LatentRowsView<T> v;
    v.base = pool_ == nullptr ? nullptr : pool_->data();
    v.block_table = table_.data();
    v.block_size = pool_ == nullptr ? 1 : block_size();
    v.block_stride = pool_ == nullptr ? 0 : pool_->block_units();
    v.num_blocks = pool_ == nullptr ? 0 : pool_->num_blocks();
    v.row_stride = pool_ == nullptr ? 0 : pool_->row_units();
    v.len = size_;
    v.kv_lora_rank = kv_lora_rank();
    v.rope_dim = rope_dim();
    return v;
  }

 private:
  LatentBlockPool<T>* pool_ = nullptr;
  std::vector<std::int32_t> table_;
  Index size_ = 0;
};

/// Same-named view maker for paged caches (latent_rows(cache) works for every cache type).
template <class T>
LatentRowsView<T> latent_rows(const PagedLatentCache<T>& cache) {
  return cache.rows();
}

/// True for the latent caches (LatentCache<T>, Fp8LatentCache, Int8LatentCache,
/// PagedLatentCache<T>): the types
/// an MLA layer's forward() appends to and latent_rows() views.
template <class Cache>
inline constexpr bool kIsLatentCache = false;
template <class T>
inline constexpr bool kIsLatentCache<LatentCache<T>> = true;
template <class T>
inline constexpr bool kIsLatentCache<QuantizedLatentCache<T>> = true;
template <class T>
inline constexpr bool kIsLatentCache<PagedLatentCache<T>> = true;

}  // namespace mla
