// A call that fails leaves the layer and its caches as they were (README, errors). For every
// entry that appends to a cache (GQA / MHA forward, MLA forward over a latent cache on both
// paths, MLA attend, MLA forward over a decompressed cache, mla_decode_batch), every cache type
// it takes and float / bf16 / double, the call is made to fail in each way we know of:
// - an attention kernel path this build rejects (each KernelPath that check_attention_path
//   refuses here, and a value outside the enum, which every build refuses);
// - bad arguments (a position outside the RoPE table, a cache without room, a wrong output
//   shape, bad batched-decode options);
// - std::bad_alloc at each allocation the call makes: the operator new below fails the k-th
//   allocation, for k = 0, 1, ... until the call gets through with a fresh workspace.
// Afterwards the cache's length and the bytes of its rows, and the outputs of a following valid
// call, must be bit-identical to those of a twin that never saw the failed call.
#include <gtest/gtest.h>

#include <atomic>
#include <cstdlib>
#include <cstring>
#include <memory>
#include <new>
#include <stdexcept>
#include <string>
#include <type_traits>
#include <vector>

#include "mla/layers/batched_decode.hpp"
#include "support/random.hpp"
#include "support/small_layers.hpp"

// ---- Allocation failure injection -------------------------------------------------------------
// g_fail_in >= 0: that many more allocations succeed, the next one throws std::bad_alloc (once;
// injection is then off again). -1: off.
namespace {
std::atomic<long> g_fail_in{-1};

void* allocate(std::size_t n, std::size_t align) {
  long left = g_fail_in.load();
  while (left >= 0 && !g_fail_in.compare_exchange_weak(left, left - 1)) {
  }
  if (left == 0) throw std::bad_alloc();
  if (n == 0) n = 1;
  void* p = align > alignof(std::max_align_t) ? std::aligned_alloc(align, (n + align - 1) / align * align)
                                              : std::malloc(n);
  if (p == nullptr) throw std::bad_alloc();
  return p;
}
}  // namespace

// The replacements pair malloc/aligned_alloc with free by design; GCC's heuristic flags the free.
#if defined(__GNUC__) && !defined(__clang__)
#pragma GCC diagnostic ignored "-Wmismatched-new-delete"
#endif
void* operator new(std::size_t n) { return allocate(n, 0); }
void* operator new[](std::size_t n) { return allocate(n, 0); }
void* operator new(std::size_t n, std::align_val_t a) { return allocate(n, std::size_t(a)); }
void* operator new[](std::size_t n, std::align_val_t a) { return allocate(n, std::size_t(a)); }
void* operator new(std::size_t n, const std::nothrow_t&) noexcept {
  try {
    return allocate(n, 0);
  } catch (...) {
    return nullptr;
  }
}
void* operator new[](std::size_t n, const std::nothrow_t& t) noexcept { return operator new(n, t); }
void operator delete(void* p) noexcept { std::free(p); }
void operator delete[](void* p) noexcept { std::free(p); }
void operator delete(void* p, std::size_t) noexcept { std::free(p); }
void operator delete[](void* p, std::size_t) noexcept { std::free(p); }
void operator delete(void* p, std::align_val_t) noexcept { std::free(p); }
void operator delete[](void* p, std::align_val_t) noexcept { std::free(p); }
void operator delete(void* p, std::size_t, std::align_val_t) noexcept { std::free(p); }
void operator delete[](void* p, std::size_t, std::align_val_t) noexcept { std::free(p); }

namespace mla {
namespace {

using kernels::KernelPath;
using testing::positions_from;
using testing::Rng;
using testing::small_gqa_config;
using testing::small_mla_config;

/// Whether the attention kernels refuse `path` (a one-token call over a one-row cache).
bool kernels_reject(KernelPath path) {
  kernels::GqaAttentionShape shape;
  shape.head_dim = shape.v_dim = 8;
  shape.cache_len = 1;
  const float q[8] = {}, k[8] = {};
  float out[8];
  kernels::DecodeWorkspace ws;
  try {
    kernels::gqa_attention(shape, q, k, k, 1.0f, out, nullptr, ws, nullptr, path);
  } catch (const std::exception&) {
    return true;
  }
  return false;
}

/// Every attention path this build rejects: a value outside the enum, which every build
/// rejects, and each named path the kernels refuse here (none on a build with every instruction
/// set and the AMX state granted).
std::vector<KernelPath> rejected_paths() {
  std::vector<KernelPath> paths{static_cast<KernelPath>(99)};
  for (KernelPath p : {KernelPath::kPortable, KernelPath::kAvx2, KernelPath::kAvx512, KernelPath::kAmx})
    if (kernels_reject(p)) paths.push_back(p);
  return paths;
}

// ---- What "as it was" compares: the length and the bytes of every valid row ----

template <class T>
void append_bytes(std::vector<unsigned char>& out, const T* p, Index n) {
  const auto* b = reinterpret_cast<const unsigned char*>(p);
  out.insert(out.end(), b, b + n * Index(sizeof(T)));
}

template <class T>
std::vector<unsigned char> snapshot(const KvCache<T>& c) {
  std::vector<unsigned char> out;
  const Index size = c.size();
  append_bytes(out, &size, 1);
  for (Index h = 0; h < c.kv_heads(); ++h) {
    append_bytes(out, c.k_head(h), size * c.head_dim());
    append_bytes(out, c.v_head(h), size * c.v_dim());
  }
  return out;
}

template <class T>
std::vector<unsigned char> snapshot(const LatentCache<T>& c) {
  std::vector<unsigned char> out;
  const Index size = c.size();
  append_bytes(out, &size, 1);
  append_bytes(out, c.data(), size * c.row_stride());
  return out;
}

/// The other latent caches (FP8, paged) through the kernels' view of their rows.
template <class Cache>
std::vector<unsigned char> snapshot(const Cache& c) {
  using Codec = LatentRowCodec<typename Cache::Element>;
  const auto view = latent_rows(c);
  std::vector<unsigned char> out;
  append_bytes(out, &view.len, 1);
  for (Index j = 0; j < view.len; ++j)
    append_bytes(out, view.row(j), Codec::row_units(view.kv_lora_rank, view.rope_dim));
  return out;
}

template <class Scalar>
bool bit_identical(const Matrix<Scalar>& a, const Matrix<Scalar>& b) {
  return a.rows() == b.rows() && a.cols() == b.cols() &&
         std::memcmp(a.data(), b.data(), sizeof(Scalar) * std::size_t(a.size())) == 0;
}

/// The checks after a failed call on `failed` (its twin `twin` never saw it): equal caches, then
/// the same valid call on both gives bit-identical outputs and caches. `step(state, out, ws)`
/// is the valid call; `failed` reuses the workspace of the failed call, `twin` a fresh one.
template <class State, class Snap, class Step, class Out>
void expect_as_if_never_called(State& failed, State& twin, Snap snap, Step step, Out out_a,
                               Out out_b, Workspace& used_ws, const std::string& what) {
  ASSERT_TRUE(snap(failed) == snap(twin)) << what << ": the failed call changed the cache";
  Workspace fresh;
  step(failed, out_a, used_ws);
  step(twin, out_b, fresh);
  EXPECT_TRUE(bit_identical(out_a, out_b)) << what << ": the next call's output differs";
  EXPECT_TRUE(snap(failed) == snap(twin)) << what << ": the next call's cache rows differ";
}

/// Fails the k-th allocation of `call` for k = 0, 1, ... until it gets through; after each
/// std::bad_alloc, `check(k)`. Returns how many allocations the call made.
template <class Call, class Check>
long fail_each_allocation(Call call, Check check) {
  for (long k = 0; k < 100000; ++k) {
    bool failed = false;
    g_fail_in = k;
    try {
      call();
    } catch (const std::bad_alloc&) {
      failed = true;
    }
    g_fail_in = -1;
    if (!failed) return k;
    check(k);
    if (::testing::Test::HasFatalFailure()) return k;
  }
  ADD_FAILURE() << "the call never got through";
  return -1;
}

template <class T>
std::string name() {
  if constexpr (std::is_same_v<T, float>) return "float";
  if constexpr (std::is_same_v<T, double>) return "double";
  if constexpr (std::is_same_v<T, bfloat16>) return "bf16";
  return "fp8";
}

/// Runs every failure kind on one layer entry. `make()` returns a cache (or a set of caches)
/// with the same history each time; `call(state, x, pos, out, ws, config)` is the entry: config
/// 0 is valid, 1 .. num_rejected make it reject its configuration (a layer with a rejected
/// attention path, bad batched-decode options). x is [T, in_cols], out [T, out_cols];
/// `too_many` tokens overflow the cache(s), all at positions < 64 (the RoPE table's length).
template <class Scalar, class Make, class Call, class Snap>
void check_entry(Make make, Call call, Snap snap, Index in_cols, Index out_cols, Index too_many,
                 Index num_rejected, const std::string& what) {
  Rng rng(7);
  const Index T = 2;
  const Matrix<Scalar> x = rng.normal<Scalar>(T, in_cols);
  const Positions pos = positions_from(3, T);
  auto step = [&](auto& state, Matrix<Scalar>& out, Workspace& ws) { call(state, x, pos, out, ws, 0); };
  Matrix<Scalar> out_a(T, out_cols), out_b(T, out_cols);

  auto expect_failure_keeps_state = [&](auto fail, const std::string& kind) {
    auto a = make(), b = make();
    Workspace ws;
    fail(a, ws);
    expect_as_if_never_called(a, b, snap, step, out_a, out_b, ws, what + ", " + kind);
  };
  for (Index i = 1; i <= num_rejected; ++i)
    expect_failure_keeps_state(
        [&](auto& s, Workspace& ws) {
          Matrix<Scalar> out(T, out_cols);
          EXPECT_THROW(call(s, x, pos, out, ws, i), std::invalid_argument) << what;
        },
        "rejected configuration #" + std::to_string(i));
  // A position outside the RoPE table (64 entries), on the last token only.
  expect_failure_keeps_state(
      [&](auto& s, Workspace& ws) {
        Matrix<Scalar> out(T, out_cols);
        Positions bad = pos;
        bad[T - 1] = 64;
        EXPECT_THROW(call(s, x, bad, out, ws, 0), std::invalid_argument) << what;
      },
      "position");
  // More tokens than the cache has room for.
  expect_failure_keeps_state(
      [&](auto& s, Workspace& ws) {
        const Matrix<Scalar> big = Matrix<Scalar>::Ones(too_many, in_cols);
        Matrix<Scalar> out(too_many, out_cols);
        EXPECT_THROW(call(s, big, positions_from(3, too_many), out, ws, 0), std::invalid_argument)
            << what;
      },
      "overflow");
  // An output of the wrong shape.
  expect_failure_keeps_state(
      [&](auto& s, Workspace& ws) {
        Matrix<Scalar> out(T, out_cols + 1);
        EXPECT_THROW(call(s, x, pos, out, ws, 0), std::invalid_argument) << what;
      },
      "output shape");
  // std::bad_alloc at each allocation of the call, with a fresh workspace each time.
  auto a = make(), b = make();
  std::unique_ptr<Workspace> ws;
  Matrix<Scalar> out(T, out_cols);
  const long allocations = fail_each_allocation(
      [&] {
        ws = std::make_unique<Workspace>();
        call(a, x, pos, out, *ws, 0);
      },
      [&](long k) {
        ASSERT_TRUE(snap(a) == snap(b))
            << what << ": the call failing at allocation " << k << " changed the cache";
      });
  EXPECT_GT(allocations, 0) << what;
  // The call that got through equals the twin's.
  Workspace fresh;
  step(b, out_b, fresh);
  EXPECT_TRUE(bit_identical(out, out_b)) << what << ", after injected allocation failures";
  EXPECT_TRUE(snap(a) == snap(b)) << what << ", after injected allocation failures";
}

/// One layer per configuration: [0] valid, then one per rejected attention path.
template <class Layer, class Config, class Weights>
std::vector<std::unique_ptr<Layer>> layers_with_paths(const Config& cfg, const Weights& w) {
  std::vector<std::unique_ptr<Layer>> layers;
  layers.push_back(std::make_unique<Layer>(cfg, w));
  for (KernelPath p : rejected_paths()) {
    typename Layer::Options o;
    o.attention_path = p;
    layers.push_back(std::make_unique<Layer>(cfg, w, o));
  }
  return layers;
}

/// Rejected configurations a layer of this scalar over this cache element checks: the paths,
/// where the fast kernels run (other types ignore the path).
template <class Scalar, class T, class Layers>
Index num_rejected(const Layers& layers) {
  return internal::kHasFastKernel<Scalar, T> ? Index(layers.size()) - 1 : 0;
}

constexpr Index kHistory = 3;   // tokens in the cache before the call
constexpr Index kCapacity = 6;  // room for 3 more
constexpr Index kTooMany = kCapacity - kHistory + 1;

template <class Scalar, class T>
void check_gqa() {
  const AttentionConfig cfg = small_gqa_config();
  Rng rng(1);
  const auto layers = layers_with_paths<GroupedQueryAttention<Scalar>>(
      cfg, testing::random_gqa_weights<Scalar>(cfg, rng));
  const Matrix<Scalar> history = rng.normal<Scalar>(kHistory, cfg.hidden_size);
  auto make = [&] {
    auto cache = layers[0]->template make_cache<T>(kCapacity);
    layers[0]->forward(history, positions_from(0, kHistory), cache);
    return cache;
  };
  auto call = [&](KvCache<T>& cache, const Matrix<Scalar>& x, const Positions& pos,
                  Matrix<Scalar>& out, Workspace& ws, Index config) {
    layers[std::size_t(config)]->forward(x, pos, cache, out, ws);
  };
  check_entry<Scalar>(make, call, [](const KvCache<T>& c) { return snapshot(c); }, cfg.hidden_size,
                      cfg.hidden_size, kTooMany, num_rejected<Scalar, T>(layers),
                      "GQA " + name<Scalar>() + " layer, " + name<T>() + " cache");
}

/// MLA over a latent cache: forward (path kNaive or kAbsorbed), or attend when `attend`.
template <class Scalar, class T>
void check_mla_latent(MlaPath path, bool attend) {
  const MlaConfig cfg = small_mla_config();
  Rng rng(3);
  const auto layers = layers_with_paths<MultiHeadLatentAttention<Scalar>>(
      cfg, testing::random_mla_weights<Scalar>(cfg, rng));
  const Matrix<Scalar> history = rng.normal<Scalar>(kHistory, cfg.hidden_size);
  auto make = [&] {
    auto cache = layers[0]->template make_latent_cache<T>(kCapacity);
    layers[0]->forward(history, positions_from(0, kHistory), cache, path);
    return cache;
  };
  auto call = [&](LatentCache<T>& cache, const Matrix<Scalar>& x, const Positions& pos,
                  Matrix<Scalar>& out, Workspace& ws, Index config) {
    const auto& layer = *layers[std::size_t(config)];
    if (attend) {
      ws.reset();
      layer.attend(x, pos, cache, out, ws, path);
    } else {
      layer.forward(x, pos, cache, out, ws, path);
    }
  };
  const Index out_cols = attend ? cfg.num_attention_heads * cfg.v_head_dim : cfg.hidden_size;
  check_entry<Scalar>(make, call, [](const LatentCache<T>& c) { return snapshot(c); },
                      cfg.hidden_size, out_cols, kTooMany,
                      num_rejected<Scalar, T>(layers),
                      std::string("MLA ") + (attend ? "attend " : "forward ") + to_string(path) +
                          ", " + name<Scalar>() + " layer, " + name<T>() + " latent cache");
}

template <class Scalar, class T>
void check_mla_decompressed() {
  const MlaConfig cfg = small_mla_config();
  Rng rng(4);
  const auto layers = layers_with_paths<MultiHeadLatentAttention<Scalar>>(
      cfg, testing::random_mla_weights<Scalar>(cfg, rng));
  const Matrix<Scalar> history = rng.normal<Scalar>(kHistory, cfg.hidden_size);
  auto make = [&] {
    auto cache = layers[0]->template make_decompressed_cache<T>(kCapacity);
    layers[0]->forward(history, positions_from(0, kHistory), cache);
    return cache;
  };
  auto call = [&](KvCache<T>& cache, const Matrix<Scalar>& x, const Positions& pos,
                  Matrix<Scalar>& out, Workspace& ws, Index config) {
    layers[std::size_t(config)]->forward(x, pos, cache, out, ws);
  };
  check_entry<Scalar>(make, call, [](const KvCache<T>& c) { return snapshot(c); }, cfg.hidden_size,
                      cfg.hidden_size, kTooMany, num_rejected<Scalar, T>(layers),
                      "MLA decompressed, " + name<Scalar>() + " layer, " + name<T>() + " cache");
}

/// mla_decode_batch over two caches made by `new_cache()`: one new token for the first, the
/// rest for the second; configuration 1 is bad BatchedDecodeOptions.
template <class Cache, class NewCache>
void check_batch(NewCache new_cache, const std::string& what) {
  const MlaConfig cfg = small_mla_config();
  Rng rng(5);
  const MultiHeadLatentAttention<float> layer(cfg, testing::random_mla_weights<float>(cfg, rng));
  const Matrix<float> history = rng.normal<float>(2 * kHistory, cfg.hidden_size);
  struct Caches {
    std::unique_ptr<Cache> a, b;
  };
  auto run = [&](Caches& s, const Matrix<float>& x, const Positions& pos, Matrix<float>& out,
                 Index config) {
    Workspace ctx;
    if (config == 1) ctx.decode_options.parts_per_thread = 0;
    mla_decode_batch(layer, x, pos, {1, x.rows() - 1}, std::vector<Cache*>{s.a.get(), s.b.get()},
                     out, ctx);
  };
  auto make = [&] {
    Caches s{new_cache(), new_cache()};
    Matrix<float> out(2 * kHistory, cfg.hidden_size);
    Workspace ctx;
    Positions pos(2 * kHistory);
    for (Index i = 0; i < 2 * kHistory; ++i) pos[i] = i % kHistory;
    mla_decode_batch(layer, history, pos, {kHistory, kHistory},
                     std::vector<Cache*>{s.a.get(), s.b.get()}, out, ctx);
    return s;
  };
  auto call = [&](Caches& s, const Matrix<float>& x, const Positions& pos, Matrix<float>& out,
                  Workspace&, Index config) { run(s, x, pos, out, config); };
  auto snap = [](const Caches& s) {
    std::vector<unsigned char> bytes = snapshot(*s.a);
    const std::vector<unsigned char> b = snapshot(*s.b);
    bytes.insert(bytes.end(), b.begin(), b.end());
    return bytes;
  };
  check_entry<float>(make, call, snap, cfg.hidden_size, cfg.hidden_size, kTooMany + 1, 1,
                     "mla_decode_batch, " + what);
}

TEST(FailureAtomicity, GqaLeavesTheCacheAsItWas) {
  check_gqa<float, float>();
  check_gqa<float, bfloat16>();
  check_gqa<double, double>();
}

TEST(FailureAtomicity, MlaLatentForwardLeavesTheCacheAsItWas) {
  for (MlaPath path : {MlaPath::kAbsorbed, MlaPath::kNaive}) {
    check_mla_latent<float, float>(path, false);
    check_mla_latent<float, bfloat16>(path, false);
    check_mla_latent<double, double>(path, false);
  }
}

TEST(FailureAtomicity, MlaAttendLeavesTheCacheAsItWas) {
  for (MlaPath path : {MlaPath::kAbsorbed, MlaPath::kNaive}) {
    check_mla_latent<float, float>(path, true);
    check_mla_latent<float, bfloat16>(path, true);
  }
}

TEST(FailureAtomicity, MlaDecompressedForwardLeavesTheCacheAsItWas) {
  check_mla_decompressed<float, float>();
  check_mla_decompressed<float, bfloat16>();
  check_mla_decompressed<double, double>();
}

TEST(FailureAtomicity, BatchedDecodeLeavesEveryCacheAsItWas) {
  const MlaConfig cfg = small_mla_config();
  const Index R = cfg.kv_lora_rank, P = cfg.qk_rope_head_dim;
  check_batch<LatentCache<float>>([&] { return std::make_unique<LatentCache<float>>(R, P, kCapacity); },
                                  "float latent caches");
  check_batch<LatentCache<bfloat16>>(
      [&] { return std::make_unique<LatentCache<bfloat16>>(R, P, kCapacity); }, "bf16 latent caches");
  check_batch<Fp8LatentCache>([&] { return std::make_unique<Fp8LatentCache>(R, P, kCapacity); },
                              "fp8 latent caches");
  LatentBlockPool<float> pool(R, P, 64, 2);  // blocks of 2 rows: the new rows start new blocks
  check_batch<PagedLatentCache<float>>(
      [&] { return std::make_unique<PagedLatentCache<float>>(pool, kCapacity); }, "paged caches");
}

TEST(FailureAtomicity, SomeAttentionPathIsRejected) {
  // The out-of-range value is rejected by every build, so every build runs the rejected-path
  // cases above.
  EXPECT_TRUE(kernels_reject(static_cast<KernelPath>(99)));
  EXPECT_FALSE(kernels_reject(KernelPath::kAuto));
}

}  // namespace
}  // namespace mla
