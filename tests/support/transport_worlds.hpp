#pragma once
// Worlds of ranks as threads of the test process, over each transport, with
// what every rank returned or threw collected for the test's thread:
//   thread_world                 run_threads
//   tcp_world (ECOPT_TEST_HAVE_TCP) tcp_transport over 127.0.0.1, rank 0 on port 0
//   simulated_world<Base>        Base's transport wrapped in simulated_transport
//   mpi_world (ECOPT_TEST_MPI_WORLD) mpi_transport, ranks as the processes of
//                                an mpirun job (see mpi_world)
// Each has `name` and run(n, fn, timeout) -> world_outcome, where fn takes the
// rank's transport. A rank's exception ends that rank (its transport sees
// it, as in a real failure) and is recorded; run() itself does not throw.
#include <atomic>
#include <chrono>
#include <cstddef>
#include <cstdint>
#include <cstring>
#include <exception>
#include <functional>
#include <future>
#include <optional>
#include <span>
#include <stdexcept>
#include <string>
#include <string_view>
#include <thread>
#include <tuple>
#include <type_traits>
#include <utility>
#include <vector>

#include "ecopt/error.hpp"
#include "ecopt/transports/simulated_transport.hpp"
#include "ecopt/transports/thread_transport.hpp"
#if ECOPT_TEST_HAVE_TCP
#include "ecopt/transports/tcp_transport.hpp"
#endif
#if ECOPT_TEST_MPI_WORLD
#include "ecopt/transports/mpi_transport.hpp"
#endif

namespace ecopt::test {

/// What each rank of a world returned or threw.
template <class R>
struct world_outcome {
  enum class failure : unsigned char { none, transport_error, other };

  std::vector<std::optional<R>> values;
  std::vector<std::string> errors;  ///< "" when the rank succeeded
  std::vector<failure> failures;

  explicit world_outcome(int n)
      : values(static_cast<std::size_t>(n)),
        errors(static_cast<std::size_t>(n)),
        failures(static_cast<std::size_t>(n), failure::none) {}

  /// Records the exception being handled as rank r's outcome.
  void record_current_exception(int r) noexcept {
    const auto i = static_cast<std::size_t>(r);
    try {
      throw;
    } catch (const ecopt::transport_error& e) {
      errors[i] = e.what();
      failures[i] = failure::transport_error;
    } catch (const std::exception& e) {
      errors[i] = e.what();
      failures[i] = failure::other;
    } catch (...) {
      errors[i] = "unknown exception";
      failures[i] = failure::other;
    }
    if (errors[i].empty()) errors[i] = "(empty message)";
  }

  [[nodiscard]] bool all_ok() const {
    for (const auto& e : errors) {
      if (!e.empty()) return false;
    }
    return true;
  }
  [[nodiscard]] bool threw_transport_error(int r) const {
    return failures[static_cast<std::size_t>(r)] == failure::transport_error;
  }
  [[nodiscard]] std::string error_text() const {
    std::string s;
    for (std::size_t r = 0; r < errors.size(); ++r) {
      if (!errors[r].empty()) s += "[rank " + std::to_string(r) + "] " + errors[r] + "\n";
    }
    return s;
  }
};

/// fn's result type, with void stored as bool.
template <class Fn, class Transport>
using rank_result_t = std::conditional_t<std::is_void_v<std::invoke_result_t<Fn&, Transport&>>,
                                         bool, std::invoke_result_t<Fn&, Transport&>>;

/// Calls fn(t) and stores its result (true for void) in out.values[r].
template <class R, class Fn, class Transport>
void store_result(world_outcome<R>& out, int r, Fn& fn, Transport& t) {
  if constexpr (std::is_void_v<std::invoke_result_t<Fn&, Transport&>>) {
    fn(t);
    out.values[static_cast<std::size_t>(r)] = true;
  } else {
    out.values[static_cast<std::size_t>(r)] = fn(t);
  }
}

struct thread_world {
  static constexpr std::string_view name = "thread_transport";

  template <class Fn>
  static auto run(int n, Fn fn, std::chrono::milliseconds timeout = std::chrono::seconds(30)) {
    world_outcome<rank_result_t<Fn, ecopt::thread_transport>> out(n);
    try {
      ecopt::run_threads(n,
                         [&](ecopt::thread_transport& t) {
                           try {
                             store_result(out, t.rank(), fn, t);
                           } catch (...) {
                             out.record_current_exception(t.rank());
                             throw;  // the world learns of the failure
                           }
                         },
                         {.timeout = timeout});
    } catch (...) {
      // Every rank's own exception is in `out`.
    }
    return out;
  }
};

#if ECOPT_TEST_HAVE_TCP

/// Runs fn(tcp_transport&) on n threads, one rank each, connected over
/// 127.0.0.1 through rank 0's port-0 address (shared with a promise).
/// `adjust(rank, options)` may change a rank's options.
template <class Fn>
auto run_tcp(int n, Fn fn, ecopt::tcp_options base = {},
             const std::function<void(int, ecopt::tcp_options&)>& adjust = {}) {
  using namespace std::chrono_literals;
  world_outcome<rank_result_t<Fn, ecopt::tcp_transport>> out(n);
  std::promise<std::uint16_t> port;
  std::shared_future<std::uint16_t> port_known = port.get_future().share();
  std::atomic<bool> port_set{false};
  auto body = [&](int r) {
    try {
      ecopt::tcp_options o = base;
      o.rank = r;
      o.world_size = n;
      if (adjust) adjust(r, o);
      if (r == 0) {
        o.on_listening = [&](std::uint16_t p) {
          port_set = true;
          port.set_value(p);
        };
      } else {
        if (port_known.wait_for(30s) != std::future_status::ready) {
          throw std::runtime_error("rank 0 never listened");
        }
        o.address = "127.0.0.1:" + std::to_string(port_known.get());
      }
      // An exception from fn destroys t while it propagates: t tells its peers.
      ecopt::tcp_transport t(o);
      store_result(out, r, fn, t);
    } catch (...) {
      out.record_current_exception(r);
      if (r == 0 && !port_set.exchange(true)) port.set_exception(std::current_exception());
    }
  };
  std::vector<std::thread> threads;
  for (int r = 0; r < n; ++r) threads.emplace_back(body, r);
  for (auto& t : threads) t.join();
  return out;
}

struct tcp_world {
  static constexpr std::string_view name = "tcp_transport";

  template <class Fn>
  static auto run(int n, Fn fn, std::chrono::milliseconds timeout = std::chrono::seconds(30)) {
    return run_tcp(n, std::move(fn), {.timeout = timeout});
  }
};

#endif  // ECOPT_TEST_HAVE_TCP

#if ECOPT_TEST_MPI_WORLD

/// Byte encodings of what ranks return, to gather them across processes:
/// arithmetic types, enums, strings, and vectors, pairs and tuples of them.
namespace wire {

template <class T>
struct is_vector : std::false_type {};
template <class T>
struct is_vector<std::vector<T>> : std::true_type {};
template <class T>
struct is_tuple_like : std::false_type {};
template <class... T>
struct is_tuple_like<std::tuple<T...>> : std::true_type {};
template <class A, class B>
struct is_tuple_like<std::pair<A, B>> : std::true_type {};

template <class T>
void put(std::vector<std::byte>& out, const T& value) {
  if constexpr (std::is_arithmetic_v<T> || std::is_enum_v<T>) {
    const auto* p = reinterpret_cast<const std::byte*>(&value);
    out.insert(out.end(), p, p + sizeof(T));
  } else if constexpr (std::is_same_v<T, std::string> || is_vector<T>::value) {
    put(out, static_cast<std::uint64_t>(value.size()));
    for (const auto& element : value) put(out, element);
  } else {
    static_assert(is_tuple_like<T>::value, "mpi_world cannot gather this result type");
    std::apply([&](const auto&... part) { (put(out, part), ...); }, value);
  }
}

template <class T>
void get(std::span<const std::byte>& in, T& value) {
  if constexpr (std::is_arithmetic_v<T> || std::is_enum_v<T>) {
    if (in.size() < sizeof(T)) throw std::runtime_error("mpi_world: truncated result");
    std::memcpy(&value, in.data(), sizeof(T));
    in = in.subspan(sizeof(T));
  } else if constexpr (std::is_same_v<T, std::string> || is_vector<T>::value) {
    std::uint64_t size = 0;
    get(in, size);
    if (size > in.size()) throw std::runtime_error("mpi_world: truncated result");
    value.resize(static_cast<std::size_t>(size));
    for (auto& element : value) get(in, element);
  } else {
    std::apply([&](auto&... part) { (get(in, part), ...); }, value);
  }
}

}  // namespace wire

/// Ranks as the processes of an mpirun job (tests/mpi/main.cpp initialises
/// MPI): run(n, ...) is called by every process of MPI_COMM_WORLD, which
/// needs at least n of them; processes 0..n-1 form the world (MPI_Comm_split)
/// and run fn on an mpi_transport over it, the others wait. Every process
/// gets every rank's outcome (MPI_Allgatherv), so all of them check the same.
struct mpi_world {
  static constexpr std::string_view name = "mpi_transport";

  template <class Fn>
  static auto run(int n, Fn fn, std::chrono::milliseconds timeout = std::chrono::seconds(30)) {
    using R = rank_result_t<Fn, ecopt::mpi_transport>;
    using outcome = world_outcome<R>;
    int me = 0, processes = 0;
    MPI_Comm_rank(MPI_COMM_WORLD, &me);
    MPI_Comm_size(MPI_COMM_WORLD, &processes);
    outcome out(n);
    if (processes < n) {
      for (int r = 0; r < n; ++r) {
        out.errors[static_cast<std::size_t>(r)] =
            "mpi_world: a world of " + std::to_string(n) + " needs mpirun -np " +
            std::to_string(n) + " or more, this job has " + std::to_string(processes);
        out.failures[static_cast<std::size_t>(r)] = outcome::failure::other;
      }
      return out;
    }
    MPI_Comm world = MPI_COMM_NULL;
    MPI_Comm_split(MPI_COMM_WORLD, me < n ? 0 : MPI_UNDEFINED, me, &world);
    std::vector<std::byte> mine;
    if (world != MPI_COMM_NULL) {
      try {
        // An exception from fn destroys t while it propagates: t tells its peers.
        ecopt::mpi_transport t(world, {.timeout = timeout});
        store_result(out, me, fn, t);
      } catch (...) {
        out.record_current_exception(me);
      }
      MPI_Comm_free(&world);
      const auto i = static_cast<std::size_t>(me);
      wire::put(mine, out.values[i].has_value());
      if (out.values[i].has_value()) wire::put(mine, *out.values[i]);
      wire::put(mine, out.errors[i]);
      wire::put(mine, out.failures[i]);
    }
    // Every process learns every rank's outcome.
    const int own = static_cast<int>(mine.size());
    std::vector<int> sizes(static_cast<std::size_t>(processes)),
        offsets(static_cast<std::size_t>(processes));
    MPI_Allgather(&own, 1, MPI_INT, sizes.data(), 1, MPI_INT, MPI_COMM_WORLD);
    int total = 0;
    for (std::size_t p = 0; p < sizes.size(); ++p) {
      offsets[p] = total;
      total += sizes[p];
    }
    std::vector<std::byte> all(static_cast<std::size_t>(total));
    MPI_Allgatherv(mine.data(), own, MPI_BYTE, all.data(), sizes.data(), offsets.data(), MPI_BYTE,
                   MPI_COMM_WORLD);
    for (int r = 0; r < n; ++r) {
      if (r == me) continue;
      const auto i = static_cast<std::size_t>(r);
      std::span<const std::byte> in(all.data() + offsets[i], static_cast<std::size_t>(sizes[i]));
      bool has_value = false;
      wire::get(in, has_value);
      if (has_value) {
        R value{};
        wire::get(in, value);
        out.values[i] = std::move(value);
      }
      wire::get(in, out.errors[i]);
      wire::get(in, out.failures[i]);
    }
    return out;
  }
};

#endif  // ECOPT_TEST_MPI_WORLD

/// Base's world with every rank's transport wrapped in simulated_transport
/// (1 Gbit/s, 50 us: the clock's value does not matter here).
template <class Base>
struct simulated_world {
  static constexpr std::string_view name = "simulated_transport";

  template <class Fn>
  static auto run(int n, Fn fn, std::chrono::milliseconds timeout = std::chrono::seconds(30)) {
    return Base::run(
        n,
        [&fn](auto& inner) {
          ecopt::simulated_transport wrapped(inner, ecopt::network_model::ethernet_1g());
          return fn(wrapped);
        },
        timeout);
  }
};

}  // namespace ecopt::test
