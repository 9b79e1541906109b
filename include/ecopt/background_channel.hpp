#pragma once
// background_channel<Tr>: communication that runs while the caller computes,
// designed once for every transport. start(job) hands the transport to a
// communication thread of this rank, which runs job(); wait() takes the
// transport back and returns what the job returned. Between the two the
// caller must not use the transport (nor what the job writes): it computes.
// Overlap-Local-SGD (algorithms/overlap_local_sgd.hpp) averages its anchor
// models this way, so a period costs max(compute, communication).
//
// Every transport works: the hand-over goes through a mutex, so the
// transport is used by one thread at a time (thread_transport, tcp_transport,
// mpi_transport under MPI_THREAD_SERIALIZED, which mpi_session asks for). A
// transport with a modelled clock (simulated_transport) runs the job at once,
// inside its in_background, and wait() moves its clock to the modelled end of
// the communication: the same results, with the overlap in modelled time.
//
// The thread starts at the first start() and ends with the channel. A job
// that throws rethrows from wait(). Destroying a channel whose job is still
// running waits for it, which the transport's deadline bounds.
#include <concepts>
#include <condition_variable>
#include <cstddef>
#include <exception>
#include <memory>
#include <mutex>
#include <new>
#include <thread>
#include <type_traits>
#include <utility>

#include "ecopt/error.hpp"
#include "ecopt/transport.hpp"

namespace ecopt {

/// A transport that models overlap itself (simulated_transport).
template <class Tr>
concept BackgroundTimedTransport = TimedTransport<Tr> && requires(Tr& t, double seconds) {
  {
    t.in_background([] {})
    } -> std::convertible_to<double>;
  t.wait_until(seconds);
};

template <Transport Tr, class Result>
class background_channel {
 public:
  /// The largest job object start() takes (a lambda of a few references).
  static constexpr std::size_t job_capacity = 16 * sizeof(void*);

  explicit background_channel(Tr& transport) noexcept : transport_(&transport) {}
  background_channel(const background_channel&) = delete;
  background_channel& operator=(const background_channel&) = delete;

  ~background_channel() {
    if (!thread_.joinable()) return;
    {
      std::unique_lock lock(mutex_);
      changed_.wait(lock, [&] { return !running_; });
      stopping_ = true;
    }
    changed_.notify_all();
    thread_.join();
  }

  /// True between start() and wait().
  [[nodiscard]] bool in_flight() const noexcept { return in_flight_; }

  /// Runs job() (which returns a Result) in the background. The job is
  /// copied into the channel (no allocation): it must be trivially copyable
  /// and at most job_capacity bytes, e.g. a lambda capturing references.
  template <class Job>
  void start(const Job& job) {
    static_assert(std::is_trivially_copyable_v<Job> && sizeof(Job) <= job_capacity &&
                      alignof(Job) <= alignof(std::max_align_t),
                  "background_channel::start: the job must be a small, trivially copyable "
                  "callable (capture references)");
    static_assert(std::is_invocable_r_v<Result, const Job&>);
    if (in_flight_) {
      throw invalid_argument("background_channel::start: the previous job was not waited for");
    }
    if constexpr (BackgroundTimedTransport<Tr>) {
      // Modelled overlap: run now, in the clock's background.
      error_ = nullptr;
      modelled_end_ = transport_->in_background([&] {
        try {
          result_ = job();
        } catch (...) {
          error_ = std::current_exception();
        }
      });
      in_flight_ = true;
    } else {
      ::new (static_cast<void*>(job_storage_)) Job(job);
      call_ = [](const void* stored) -> Result { return (*static_cast<const Job*>(stored))(); };
      if (!thread_.joinable()) thread_ = std::thread([this] { serve(); });
      {
        std::lock_guard lock(mutex_);
        error_ = nullptr;
        running_ = true;
      }
      in_flight_ = true;
      changed_.notify_all();
    }
  }

  /// Waits for the job, gives the transport back to the caller and returns
  /// the job's result; rethrows the job's exception.
  Result wait() {
    if (!in_flight_) {
      throw invalid_argument("background_channel::wait: nothing was started");
    }
    if constexpr (BackgroundTimedTransport<Tr>) {
      transport_->wait_until(modelled_end_);
    } else {
      std::unique_lock lock(mutex_);
      changed_.wait(lock, [&] { return !running_; });
    }
    in_flight_ = false;
    if (error_) std::rethrow_exception(std::exchange(error_, nullptr));
    return result_;
  }

 private:
  void serve() {
    std::unique_lock lock(mutex_);
    for (;;) {
      changed_.wait(lock, [&] { return running_ || stopping_; });
      if (stopping_) return;
      lock.unlock();
      Result result{};
      std::exception_ptr error;
      try {
        result = call_(job_storage_);
      } catch (...) {
        error = std::current_exception();
      }
      lock.lock();
      result_ = result;
      error_ = error;
      running_ = false;
      changed_.notify_all();
    }
  }

  Tr* transport_;
  alignas(std::max_align_t) std::byte job_storage_[job_capacity]{};
  Result (*call_)(const void*) = nullptr;
  Result result_{};
  std::exception_ptr error_;
  double modelled_end_ = 0;
  bool in_flight_ = false;  // the caller's view; touched by the caller only
  std::mutex mutex_;
  std::condition_variable changed_;
  bool running_ = false;
  bool stopping_ = false;
  std::thread thread_;
};

}  // namespace ecopt
