// The in-process thread transport's own behaviour: run_threads (arguments,
// results by rank, the first failure rethrown with its type), recv_any's
// arrival order and the allocation-free steady state. Delivery, order, tags,
// deadlines and failure propagation are in the transport contract suite
// (transport_contracts_test.cpp). Assertions run on the test's thread; rank
// functions only return what they saw.
#include <doctest/doctest.h>

#include <atomic>
#include <chrono>
#include <cstddef>
#include <cstdint>
#include <latch>
#include <numeric>
#include <span>
#include <stdexcept>
#include <string>
#include <vector>

#include "ecopt/error.hpp"
#include "ecopt/transports/thread_transport.hpp"
#include "support/alloc_counter.hpp"

// Everything of this file lives in its own namespace, so that test files can share a
// translation unit (the unity build in tests/CMakeLists.txt).
namespace thread_transport_test {

namespace {

using namespace std::chrono_literals;
using ecopt::run_threads;
using ecopt::thread_transport;

std::vector<std::byte> pattern(std::size_t size, unsigned seed) {
  std::vector<std::byte> v(size);
  for (std::size_t i = 0; i < size; ++i) {
    v[i] = static_cast<std::byte>((i * 131u + seed * 17u + (i >> 8)) & 0xffu);
  }
  return v;
}

struct custom_failure : std::runtime_error {
  using std::runtime_error::runtime_error;
};

}  // namespace

TEST_CASE("run_threads rejects a world size below one and a non-positive timeout") {
  auto noop = [](thread_transport&) {};
  CHECK_THROWS_AS(run_threads(0, noop), ecopt::invalid_argument);
  CHECK_THROWS_AS(run_threads(-3, noop), ecopt::invalid_argument);
  CHECK_THROWS_AS(run_threads(2, noop, {.timeout = 0ms}), ecopt::invalid_argument);
}

TEST_CASE("run_threads runs every rank once and returns the results by rank") {
  for (int n = 1; n <= 5; ++n) {
    CAPTURE(n);
    const auto results =
        run_threads(n,
                    [](thread_transport& t) {
                      return std::vector<std::int64_t>{t.rank(), t.size(), t.timeout().count()};
                    },
                    {.timeout = 1234ms});
    REQUIRE(results.size() == static_cast<std::size_t>(n));
    for (int r = 0; r < n; ++r) {
      CHECK(results[r] == std::vector<std::int64_t>{r, n, 1234});
    }

    std::vector<std::atomic<int>> visits(static_cast<std::size_t>(n));
    run_threads(n, [&](thread_transport& t) { ++visits[static_cast<std::size_t>(t.rank())]; });
    for (auto& v : visits) CHECK(v.load() == 1);
  }
}

TEST_CASE("run_threads rethrows the first failure with its own type; peers see its message") {
  // (That peers fail naming the rank is part of the transport contract suite.)
  std::vector<std::string> errors(3);
  try {
    run_threads(3, [&](thread_transport& t) {
      std::vector<std::byte> into;
      if (t.rank() == 1) throw custom_failure("worker exploded");
      try {
        t.recv(1, 0, into);  // never sent: rank 1 fails instead
      } catch (const ecopt::transport_error& e) {
        errors[static_cast<std::size_t>(t.rank())] = e.what();
        throw;
      }
    });
    FAIL("expected custom_failure");
  } catch (const custom_failure& e) {
    CHECK(std::string(e.what()) == "worker exploded");
  }
  for (int r : {0, 2}) {
    CAPTURE(errors[static_cast<std::size_t>(r)]);
    CHECK(errors[static_cast<std::size_t>(r)].find("peer rank 1 failed: worker exploded") !=
          std::string::npos);
  }

  // An ecopt exception deep in a ring keeps its type too.
  CHECK_THROWS_AS(run_threads(4,
                              [](thread_transport& t) {
                                if (t.rank() == 2) throw ecopt::numeric_error("NaN in gradient");
                                std::vector<std::byte> into;
                                t.recv((t.rank() + t.size() - 1) % t.size(), 0, into);
                              }),
                  ecopt::numeric_error);
}
TEST_CASE("recv_any takes messages in arrival order") {
  // Rank 1's message is queued before rank 2 may send: in one process the
  // arrival order is the causal one. (The rest of recv_any's contract is in
  // the transport contract suite.)
  std::latch both_sent(1);
  const auto results = run_threads(3, [&](thread_transport& t) {
    std::vector<int> senders;
    std::vector<std::byte> into;
    const std::byte token{42};
    switch (t.rank()) {
      case 0:
        both_sent.wait();  // so recv_any has two candidates to choose from
        senders.push_back(t.recv_any(7, into));
        senders.push_back(t.recv_any(7, into));
        break;
      case 1:  // sends to 0 first, then lets rank 2 go
        t.send(0, 7, std::span(&token, 1));
        t.send(2, 8, {});
        break;
      default:
        t.recv(1, 8, into);
        t.send(0, 7, std::span(&token, 1));
        both_sent.count_down();
    }
    return senders;
  });
  CHECK(results[0] == std::vector<int>{1, 2});
}
TEST_CASE("send and recv do not allocate once buffers have circulated") {
  const std::vector<std::size_t> sizes{0, 8, 1000, 4096, 1};
  for (int n : {2, 3}) {
    CAPTURE(n);
    std::latch all_sent(n);
    const auto counts = run_threads(n, [&](thread_transport& t) {
      const int right = (t.rank() + 1) % t.size();
      const int left = (t.rank() + t.size() - 1) % t.size();
      const auto source = pattern(4096, static_cast<unsigned>(t.rank()));
      std::vector<std::byte> into;
      std::size_t received = 0;
      auto round = [&](std::size_t i) {
        const std::size_t size = sizes[i % sizes.size()];
        t.send(right, 1, std::span(source).first(size));
        t.recv(left, 1, into);
        received += into.size();
      };
      // An inbox only gains buffers when more messages are in flight than
      // ever before. A burst of the largest size, all in flight at once,
      // provisions more buffers than this ring can ever have in flight (n),
      // so the count below does not depend on the thread schedule.
      constexpr int burst = 8;
      for (int i = 0; i < burst; ++i) t.send(right, 0, source);
      all_sent.arrive_and_wait();
      for (int i = 0; i < burst; ++i) t.recv(left, 0, into);
      for (std::size_t i = 0; i < 2 * sizes.size(); ++i) round(i);

      ecopt::test::allocation_scope scope;
      received = 0;
      for (std::size_t i = 0; i < 20 * sizes.size(); ++i) round(i);
      return std::pair{scope.count(), received};
    });
    const std::size_t per_cycle = std::accumulate(sizes.begin(), sizes.end(), std::size_t{0});
    for (const auto& [allocations, received] : counts) {
      CHECK(allocations == 0);
      CHECK(received == 20 * per_cycle);
    }
  }
}

}  // namespace thread_transport_test
