// The in-process thread transport: point-to-point delivery, FIFO order, tag
// checks, deadlines, failure propagation and allocation-free steady state.
// Assertions run on the test's thread; rank functions only return what they saw.
#include <doctest/doctest.h>

#include <algorithm>
#include <atomic>
#include <chrono>
#include <cstddef>
#include <cstdint>
#include <cstring>
#include <latch>
#include <numeric>
#include <span>
#include <stdexcept>
#include <string>
#include <thread>
#include <vector>

#include "ecopt/error.hpp"
#include "ecopt/transports/thread_transport.hpp"
#include "support/alloc_counter.hpp"

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

bool contains(const std::string& text, const std::string& part) {
  return text.find(part) != std::string::npos;
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

TEST_CASE("point-to-point messages arrive intact in both directions") {
  const std::vector<std::size_t> sizes{0, 1, 1000, std::size_t{1} << 20};
  struct seen {
    int mismatches = 0;
    std::uint64_t bytes_sent = 0;
  };
  const auto results = run_threads(2, [&](thread_transport& t) {
    seen out;
    const int peer = 1 - t.rank();
    // Stale contents and capacity must not leak into what recv returns.
    std::vector<std::byte> into(3000, std::byte{0xee});
    for (std::size_t i = 0; i < sizes.size(); ++i) {
      const auto mine = pattern(sizes[i], static_cast<unsigned>(t.rank() * 10 + i));
      t.send(peer, static_cast<ecopt::message_tag>(i), mine);
    }
    for (std::size_t i = 0; i < sizes.size(); ++i) {
      t.recv(peer, static_cast<ecopt::message_tag>(i), into);
      if (into != pattern(sizes[i], static_cast<unsigned>(peer * 10 + i))) ++out.mismatches;
    }
    out.bytes_sent = t.bytes_sent();
    return out;
  });
  const std::uint64_t total = std::accumulate(sizes.begin(), sizes.end(), std::uint64_t{0});
  for (const seen& s : results) {
    CHECK(s.mismatches == 0);
    CHECK(s.bytes_sent == total);
  }
}

TEST_CASE("messages between a pair keep their order; pairs do not block each other") {
  constexpr int count = 200;
  // Rank 0 drains rank 2 before rank 1, the opposite of any natural order.
  const auto results = run_threads(3, [](thread_transport& t) {
    std::vector<int> order;
    if (t.rank() == 0) {
      std::vector<std::byte> into;
      for (int from : {2, 1}) {
        for (int i = 0; i < count; ++i) {
          t.recv(from, 7, into);
          int value = -1;
          if (into.size() == sizeof(int)) std::memcpy(&value, into.data(), sizeof(int));
          order.push_back(value);
        }
      }
    } else {
      for (int i = 0; i < count; ++i) {
        const int value = t.rank() * 1000 + i;
        t.send(0, 7, std::as_bytes(std::span<const int>(&value, 1)));
      }
    }
    return order;
  });
  std::vector<int> expected;
  for (int from : {2, 1}) {
    for (int i = 0; i < count; ++i) expected.push_back(from * 1000 + i);
  }
  CHECK(results[0] == expected);
}

TEST_CASE("a message with an unexpected tag is a transport_error naming both tags") {
  try {
    run_threads(2, [](thread_transport& t) {
      std::vector<std::byte> into;
      if (t.rank() == 0) {
        t.send(1, 5, {});
      } else {
        t.recv(0, 3, into);
      }
    });
    FAIL("expected a transport_error");
  } catch (const ecopt::transport_error& e) {
    const std::string what = e.what();
    CHECK(contains(what, "rank 1"));
    CHECK(contains(what, "expected tag 3"));
    CHECK(contains(what, "tag 5"));
  }
}

TEST_CASE("peers out of range or equal to the own rank are invalid_argument") {
  const auto caught = run_threads(2, [](thread_transport& t) {
    int count = 0;
    if (t.rank() != 0) return count;
    std::vector<std::byte> into;
    for (int peer : {-1, 2, 0}) {
      try {
        t.send(peer, 1, {});
      } catch (const ecopt::invalid_argument&) {
        ++count;
      }
      try {
        t.recv(peer, 1, into);
      } catch (const ecopt::invalid_argument&) {
        ++count;
      }
    }
    return count;
  });
  CHECK(caught[0] == 6);
  CHECK(caught[1] == 0);
}

TEST_CASE("a peer that never sends makes recv fail within the deadline") {
  // Both ranks wait for each other: nobody ever sends.
  std::vector<std::string> errors(2);
  const auto start = std::chrono::steady_clock::now();
  try {
    run_threads(2,
                [&](thread_transport& t) {
                  std::vector<std::byte> into;
                  try {
                    t.recv(1 - t.rank(), 3, into);
                  } catch (const ecopt::transport_error& e) {
                    errors[static_cast<std::size_t>(t.rank())] = e.what();
                    throw;
                  }
                },
                {.timeout = 200ms});
    FAIL("expected a transport_error");
  } catch (const ecopt::transport_error& e) {
    CHECK(contains(e.what(), "timed out after 200 ms"));
  }
  const auto elapsed = std::chrono::steady_clock::now() - start;
  CHECK(elapsed >= 200ms);
  CHECK(elapsed < 10s);
  // The first rank to time out names its peer and the tag; the other may
  // instead report that first rank's failure. Either way both ranks woke up.
  bool timed_out = false;
  for (int r = 0; r < 2; ++r) {
    const std::string& what = errors[static_cast<std::size_t>(r)];
    CAPTURE(what);
    CHECK(contains(what, "rank " + std::to_string(r) + ":"));
    if (contains(what, "timed out")) {
      timed_out = true;
      CHECK(contains(what, "from rank " + std::to_string(1 - r) + " (tag 3)"));
    }
  }
  CHECK(timed_out);
}

TEST_CASE(
    "a peer that returns without sending fails its receiver without waiting out the deadline") {
  const auto start = std::chrono::steady_clock::now();
  try {
    run_threads(2, [](thread_transport& t) {
      std::vector<std::byte> into;
      if (t.rank() == 1) t.recv(0, 4, into);
    });  // default deadline: one minute
    FAIL("expected a transport_error");
  } catch (const ecopt::transport_error& e) {
    CHECK(contains(e.what(), "rank 1: rank 0 has returned"));
  }
  CHECK(std::chrono::steady_clock::now() - start < 10s);
}

TEST_CASE("the first failure is rethrown with its own type; peers learn which rank failed") {
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
    const std::string& what = errors[static_cast<std::size_t>(r)];
    CAPTURE(what);
    CHECK(contains(what, "rank " + std::to_string(r) + ":"));
    CHECK(contains(what, "peer rank 1 failed: worker exploded"));
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

TEST_CASE("recv_any takes messages in arrival order and reports the sender") {
  const auto results = run_threads(3, [](thread_transport& t) {
    std::vector<int> senders;
    std::vector<std::byte> into;
    const std::byte token{42};
    switch (t.rank()) {
      case 0:
        senders.push_back(t.recv_any(7, into));
        senders.push_back(t.recv_any(7, into));
        senders.push_back(static_cast<int>(into.size()));
        // Everyone else has returned: nothing more can come.
        try {
          t.recv_any(7, into);
        } catch (const ecopt::transport_error&) {
          senders.push_back(-1);
        }
        break;
      case 1:  // sends to 0 first, then lets rank 2 go
        t.send(0, 7, std::span(&token, 1));
        t.send(2, 8, {});
        break;
      default:
        t.recv(1, 8, into);
        t.send(0, 7, std::span(&token, 1));
    }
    return senders;
  });
  CHECK(results[0] == std::vector<int>{1, 2, 1, -1});

  CHECK_THROWS_AS(run_threads(1,
                              [](thread_transport& t) {
                                std::vector<std::byte> into;
                                t.recv_any(0, into);
                              }),
                  ecopt::invalid_argument);
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
