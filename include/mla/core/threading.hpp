// A small fork-join thread pool for the fast kernels. There is no global pool: the caller creates
// a `ThreadPool` and passes a pointer to each kernel (gemma.cpp's ThreadingContext, Eigen's
// `.device()`); a null pointer or a 1-thread pool runs the work inline on the calling thread,
// without locking, waking anyone or allocating.
//
// `parallel_for(n_tasks, fn)` calls `fn(task, thread)` once for every task in [0, n_tasks).
// `thread` is in [0, num_threads()) and is the index of the thread running the task (the calling
// thread is thread 0), so kernels can give each thread its own scratch buffer. Tasks are handed out
// dynamically; kernels must therefore make results depend only on `task`, never on `thread`.
// A call allocates nothing: the job is passed as a pointer to the caller's callable.
#pragma once

#include <atomic>
#include <condition_variable>
#include <cstdint>
#include <mutex>
#include <thread>
#include <type_traits>
#include <utility>
#include <vector>

#include "mla/core/check.hpp"
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
      stop_ = true;
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
    std::lock_guard<std::mutex> serial(call_mu_);
    {
      std::lock_guard<std::mutex> lock(mu_);
      invoke_ = [](void* ctx, Index task, int thread) { (*static_cast<F*>(ctx))(task, thread); };
      ctx_ = const_cast<void*>(static_cast<const void*>(&fn));
      n_tasks_ = n_tasks;
      next_task_.store(0, std::memory_order_relaxed);
      busy_ = num_threads_ - 1;
      ++generation_;
    }
    start_cv_.notify_all();
    run_tasks(0);
    std::unique_lock<std::mutex> lock(mu_);
    done_cv_.wait(lock, [this] { return busy_ == 0; });
  }

 private:
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
      {
        std::unique_lock<std::mutex> lock(mu_);
        start_cv_.wait(lock, [&] { return stop_ || generation_ != seen; });
        if (stop_) return;
        seen = generation_;
      }
      run_tasks(thread);
      bool last = false;
      {
        std::lock_guard<std::mutex> lock(mu_);
        last = (--busy_ == 0);
      }
      if (last) done_cv_.notify_one();
    }
  }

  int num_threads_;
  std::vector<std::thread> workers_;
  std::mutex call_mu_;  // serialises concurrent parallel_for calls on one pool
  std::mutex mu_;       // guards the job fields below, busy_, generation_ and stop_
  std::condition_variable start_cv_;
  std::condition_variable done_cv_;
  std::uint64_t generation_ = 0;
  int busy_ = 0;
  bool stop_ = false;
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
