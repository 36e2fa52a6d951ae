// core/threading.hpp basics, as the header documents them: a pool needs at least one thread;
// a null pool, a 1-thread pool and a 1-task call run inline, in order, on the calling thread as
// thread 0; a call with no tasks runs nothing; on a real pool every task runs once, thread
// indices stay in [0, num_threads) and thread 0 is the caller. (Spinning versus sleeping
// workers and concurrent callers: tests/reliability/test_concurrency.cpp.)
#include <gtest/gtest.h>

#include <atomic>
#include <thread>
#include <vector>

#include "mla/core/threading.hpp"
#include "support/error_message.hpp"

namespace mla {
namespace {

using testing::invalid_argument_of;

TEST(Threading, APoolNeedsAThread) {
  EXPECT_HAS(invalid_argument_of([] { ThreadPool p(0); }), "num_threads must be >= 1, got 0");
  EXPECT_HAS(invalid_argument_of([] { ThreadPool p(-3); }), "got -3");
  ThreadPool three(3);
  EXPECT_EQ(three.num_threads(), 3);
  EXPECT_EQ(num_threads(&three), 3);
  EXPECT_EQ(num_threads(nullptr), 1);
}

/// Runs `n` tasks through parallel_for(pool) and checks they ran inline, in order, as thread 0.
void expect_inline_in_order(ThreadPool* pool, Index n) {
  std::vector<Index> order;
  const auto caller = std::this_thread::get_id();
  bool on_caller = true, thread0 = true;
  parallel_for(pool, n, [&](Index task, int thread) {
    order.push_back(task);
    on_caller = on_caller && std::this_thread::get_id() == caller;
    thread0 = thread0 && thread == 0;
  });
  ASSERT_EQ(Index(order.size()), n);
  for (Index i = 0; i < n; ++i) EXPECT_EQ(order[std::size_t(i)], i);
  EXPECT_TRUE(on_caller);
  EXPECT_TRUE(thread0);
}

TEST(Threading, NullAndSingleThreadPoolsRunInline) {
  expect_inline_in_order(nullptr, 0);
  expect_inline_in_order(nullptr, 17);
  ThreadPool one(1);
  expect_inline_in_order(&one, 17);
  ThreadPool four(4);
  expect_inline_in_order(&four, 1);  // one task: no hand-off
}

TEST(Threading, NoTasksRunNothing) {
  ThreadPool pool(3);
  int runs = 0;
  pool.parallel_for(0, [&](Index, int) { ++runs; });
  pool.parallel_for(-5, [&](Index, int) { ++runs; });
  parallel_for(&pool, 0, [&](Index, int) { ++runs; });
  parallel_for(nullptr, -1, [&](Index, int) { ++runs; });
  EXPECT_EQ(runs, 0);
}

TEST(Threading, EveryTaskOnceAndThreadZeroIsTheCaller) {
  ThreadPool pool(4);
  const auto caller = std::this_thread::get_id();
  for (Index n : {2, 4, 5, 1000}) {
    std::vector<std::atomic<int>> runs(static_cast<std::size_t>(n));
    std::atomic<int> bad_thread{0}, thread0_elsewhere{0};
    parallel_for(&pool, n, [&](Index task, int thread) {
      runs[std::size_t(task)].fetch_add(1);
      if (thread < 0 || thread >= 4) bad_thread.fetch_add(1);
      if ((thread == 0) != (std::this_thread::get_id() == caller)) thread0_elsewhere.fetch_add(1);
    });
    for (Index t = 0; t < n; ++t) EXPECT_EQ(runs[std::size_t(t)].load(), 1) << n << " " << t;
    EXPECT_EQ(bad_thread.load(), 0);
    EXPECT_EQ(thread0_elsewhere.load(), 0);
  }
}

}  // namespace
}  // namespace mla
