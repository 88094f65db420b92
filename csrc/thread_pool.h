// A persistent pool of pinned worker threads running one job at a time, all workers together.
//
// [NOTE] A job is fn(tid, nthreads), run by every worker at once; inside it, workers share work
// through atomic counters and meet at barrier(). submit() returns at once (the Python thread goes
// on with the GPU side) and wait() blocks until that job is done. Idle workers spin for a few
// microseconds (a decode step submits the next layer soon) and then sleep on a condition
// variable, so an idle pool costs no CPU. Jobs run in submission order.
#pragma once

#include <atomic>
#include <condition_variable>
#include <cstdint>
#include <deque>
#include <exception>
#include <functional>
#include <map>
#include <memory>
#include <mutex>
#include <thread>
#include <vector>

namespace hk2 {

class ThreadPool {
 public:
  using Job = std::function<void(int tid, int nthreads)>;

  explicit ThreadPool(int nthreads);
  ~ThreadPool();

  int size() const { return n_; }
  // Returns the job's ticket. skip_tid: a worker that does not run this job (parallel_items: the one
  // pinned to the CPU the calling thread works on); the job is done when the others have run it. A job
  // that skips a worker must not call barrier().
  uint64_t submit(Job fn, int skip_tid = -1);
  int worker_on_cpu(int cpu) const;  // the worker pinned to `cpu`, or -1
  void wait(uint64_t ticket);    // rethrows the job's first exception
  bool done(uint64_t ticket);
  void barrier();                // inside a job: every worker waits for all the others

 private:
  void worker(int tid);
  void start_next_locked();

  int n_;
  std::vector<std::thread> threads_;
  std::mutex mu_;
  std::condition_variable work_cv_, done_cv_;
  struct Queued {
    uint64_t ticket;
    Job fn;
    int skip;
  };
  std::deque<Queued> queue_;
  std::vector<int> cpu_of_;              // the CPU each worker is pinned to (-1: not pinned)
  uint64_t posted_ = 0;                  // tickets handed out
  std::atomic<uint64_t> finished_{0};    // jobs done (tickets <= finished_ are done)
  std::map<uint64_t, std::exception_ptr> errors_;   // failed jobs not yet waited for
  bool stop_ = false;
  bool busy_ = false;
  // current job, read by all workers
  Job current_;
  // current job, as ticket << 16 | (skipped worker + 1): one load gives both
  std::atomic<uint64_t> current_tag_{0};
  std::atomic<int> running_{0};
  std::exception_ptr current_error_;
  std::mutex error_mu_;
  // barrier state
  std::atomic<int> bar_count_{0};
  std::atomic<uint64_t> bar_gen_{0};
  std::mutex bar_mu_;
  std::condition_variable bar_cv_;
};

// Items 0..items-1 of fn(item), each run once: by the calling thread, and by the workers of
// global_pool(threads) asked to help when threads > 1. Returns when every item is done, not when every
// helper has run: a helper that is descheduled or still busy with an earlier job (FIFO pool) costs
// nothing, it wakes later, finds no item left and leaves without touching fn. Items are handed out by
// an atomic counter, so a slow core takes fewer. fn's exceptions are not caught: it must not throw.
void parallel_items(int items, int threads, const std::function<void(int item)>& fn);

// The process-wide pool with `nthreads` workers, created on first use and kept; asking for a
// different size replaces it once the running jobs are done.
ThreadPool& global_pool(int nthreads);
int default_threads();   // CPUs in this process's affinity mask

}  // namespace hk2
