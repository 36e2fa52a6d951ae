// A small fork-join thread pool for the fast kernels. There is no global pool: the caller creates
// a `ThreadPool` and passes a pointer to each kernel (gemma.cpp's ThreadingContext, Eigen's
// `.device()`); a null pointer or a 1-thread pool runs the work inline on the calling thread,
// without locking, waking anyone or allocating.
//
// `parallel_for(n_tasks, fn)` calls `fn(task, thread)` once for every task in [0, n_tasks).
// `thread` is in [0, num_threads()) and is the index of the thread running the task (the calling
// thread is thread 0), so kernels can give each thread its own scratch buffer. Tasks are handed out
// dynamically; kernels must therefore make results depend only on `task`, never on `thread`.
// A call allocates nothing: the job is passed as a pointer to the caller's callable. Workers and
// the caller poll for up to kSpinMicros after a job before blocking on a condition variable, so
// back-to-back calls (a decode step makes several) do not pay a thread wake-up each.
#pragma once

#include <atomic>
#include <chrono>
#include <condition_variable>
#include <cstdint>
#include <mutex>
#include <thread>
#include <type_traits>
#include <utility>
#include <vector>

#include "mla/core/check.hpp"
#include "mla/core/macros.hpp"
#include "mla/core/types.hpp"

namespace mla {

/// Fixed set of worker threads; the calling thread takes part in every `parallel_for` as thread 0.
/// One pool serves one `parallel_for` at a time (calls from several threads are serialised);
/// `fn` must not throw and must not call `parallel_for` on the same pool.
class ThreadPool {
 public:
  /// Creates `num_threads - 1` workers (the caller is the last one). `num_threads` >= 1.
  explicit ThreadPool(int num_threads) : num_threads_(num_threads) {
    MLA_CHECK_ARG(num_threads >= 1, "ThreadPool: num_threads must be >= 1, got ", num_threads);
    workers_.reserve(static_cast<std::size_t>(num_threads - 1));
    for (int t = 1; t < num_threads; ++t) workers_.emplace_back([this, t] { worker_loop(t); });
  }

  ThreadPool(const ThreadPool&) = delete;
  ThreadPool& operator=(const ThreadPool&) = delete;

  ~ThreadPool() {
    {
      std::lock_guard<std::mutex> lock(mu_);
      stop_flag_.store(true, std::memory_order_release);
    }
    start_cv_.notify_all();
    for (std::thread& w : workers_) w.join();
  }

  /// Number of threads that run tasks, the caller included.
  int num_threads() const { return num_threads_; }

  /// Runs `fn(task, thread)` for every task in [0, n_tasks) and returns when all are done.
  template <class Fn>
  void parallel_for(Index n_tasks, Fn&& fn) {
    if (n_tasks <= 0) return;
    if (num_threads_ == 1 || n_tasks == 1) {
      for (Index task = 0; task < n_tasks; ++task) fn(task, 0);
      return;
    }
    using F = std::remove_reference_t<Fn>;
    run_job(n_tasks, [](void* ctx, Index task, int thread) { (*static_cast<F*>(ctx))(task, thread); },
            const_cast<void*>(static_cast<const void*>(&fn)));
  }

 private:
  /// The multi-threaded part of parallel_for, the same code for every callable (which it reaches
  /// through `invoke(ctx, task, thread)`) and kept out of line, so a call site compiles only the
  /// forwarding template above and the callable's invoker.
  MLA_NOINLINE void run_job(Index n_tasks, void (*invoke)(void*, Index, int), void* ctx) {
    std::lock_guard<std::mutex> serial(call_mu_);
    {
      std::lock_guard<std::mutex> lock(mu_);
      invoke_ = invoke;
      ctx_ = ctx;
      n_tasks_ = n_tasks;
      next_task_.store(0, std::memory_order_relaxed);
      busy_.store(num_threads_ - 1, std::memory_order_relaxed);
      // Release: a spinning worker that sees the new generation also sees the job fields.
      generation_.store(generation_.load(std::memory_order_relaxed) + 1, std::memory_order_release);
    }
    start_cv_.notify_all();
    run_tasks(0);
    // Workers finish within microseconds of the caller on balanced work: spin first.
    if (!spin_until([this] { return busy_.load(std::memory_order_acquire) == 0; })) {
      std::unique_lock<std::mutex> lock(mu_);
      done_cv_.wait(lock, [this] { return busy_.load(std::memory_order_acquire) == 0; });
    }
  }

  // How long a thread polls before it blocks on a condition variable. Decode calls come back to
  // back (one or two parallel_for per kernel, a few per layer), and waking a blocked thread costs
  // tens of microseconds or more (an OS round trip; measurements in docs/benchmarks.md), a visible
  // share of a millisecond-scale attention call. Polling for up to kSpinMicros after each job hides
  // that; idle pools still block, so they cost nothing between bursts of work.
  static constexpr int kSpinMicros = 200;

  template <class Pred>
  static bool spin_until(Pred done) {
    const auto start = std::chrono::steady_clock::now();
    for (;;) {
      for (int i = 0; i < 64; ++i) {
        if (done()) return true;
        cpu_relax();
      }
      if (std::chrono::steady_clock::now() - start > std::chrono::microseconds(kSpinMicros)) return done();
    }
  }

  static void cpu_relax() {
#if defined(__x86_64__) || defined(__i386__)
    __builtin_ia32_pause();
#elif defined(__aarch64__)
    __asm__ __volatile__("yield");
#endif
  }

  void run_tasks(int thread) {
    for (;;) {
      const Index task = next_task_.fetch_add(1, std::memory_order_relaxed);
      if (task >= n_tasks_) return;
      invoke_(ctx_, task, thread);
    }
  }

  void worker_loop(int thread) {
    std::uint64_t seen = 0;
    for (;;) {
      const bool fresh = spin_until([&] {
        return stop_flag_.load(std::memory_order_acquire) ||
               generation_.load(std::memory_order_acquire) != seen;
      });
      if (!fresh) {
        std::unique_lock<std::mutex> lock(mu_);
        start_cv_.wait(lock, [&] {
          return stop_flag_.load(std::memory_order_relaxed) ||
                 generation_.load(std::memory_order_relaxed) != seen;
        });
      }
      if (stop_flag_.load(std::memory_order_acquire)) return;
      seen = generation_.load(std::memory_order_acquire);
      run_tasks(thread);
      // The last worker out wakes the caller if it stopped spinning (taking the mutex between the
      // decrement and the notify: the caller checks busy_ under it, so the wake-up is not lost).
      if (busy_.fetch_sub(1, std::memory_order_acq_rel) == 1) {
        { std::lock_guard<std::mutex> lock(mu_); }
        done_cv_.notify_one();
      }
    }
  }

  int num_threads_;
  std::vector<std::thread> workers_;
  std::mutex call_mu_;  // serialises concurrent parallel_for calls on one pool
  std::mutex mu_;       // pairs with the condition variables (blocking waits)
  std::condition_variable start_cv_;
  std::condition_variable done_cv_;
  std::atomic<std::uint64_t> generation_{0};  // bumped once per parallel_for
  std::atomic<int> busy_{0};                  // workers still running the current job
  std::atomic<bool> stop_flag_{false};
  void (*invoke_)(void*, Index, int) = nullptr;
  void* ctx_ = nullptr;
  Index n_tasks_ = 0;
  std::atomic<Index> next_task_{0};
};

/// Threads available through `pool` (1 for a null pool).
inline int num_threads(const ThreadPool* pool) { return pool == nullptr ? 1 : pool->num_threads(); }

/// `pool->parallel_for(n_tasks, fn)`, or an inline loop with `thread` = 0 when `pool` is null.
template <class Fn>
void parallel_for(ThreadPool* pool, Index n_tasks, Fn&& fn) {
  if (pool == nullptr || pool->num_threads() == 1) {
    for (Index task = 0; task < n_tasks; ++task) fn(task, 0);
    return;
  }
  pool->parallel_for(n_tasks, std::forward<Fn>(fn));
}

}  // namespace mla
