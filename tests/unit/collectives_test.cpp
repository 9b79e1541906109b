// The collectives over the thread transport, for world sizes 1..5: results
// against serial references, bitwise agreement between ranks, protocol
// errors, costs and allocation-free steady state.
// Assertions run on the test's thread; rank functions only return what they saw.
#include <doctest/doctest.h>

#include <algorithm>
#include <atomic>
#include <chrono>
#include <cmath>
#include <cstddef>
#include <cstdint>
#include <cstring>
#include <latch>
#include <optional>
#include <span>
#include <string>
#include <thread>
#include <type_traits>
#include <vector>

#include "ecopt/collectives/allgather.hpp"
#include "ecopt/collectives/allreduce.hpp"
#include "ecopt/collectives/barrier.hpp"
#include "ecopt/collectives/broadcast.hpp"
#include "ecopt/collectives/collective_workspace.hpp"
#include "ecopt/error.hpp"
#include "ecopt/transports/thread_transport.hpp"
#include "support/alloc_counter.hpp"

// Everything of this file lives in its own namespace, so that test files can share a
// translation unit (the unity build in tests/CMakeLists.txt).
namespace collectives_test {

namespace {

using namespace std::chrono_literals;
using ecopt::collective_workspace;
using ecopt::run_threads;
using ecopt::thread_transport;

/// Rank r's i-th input. Floating values are not dyadic, so the ring's
/// summation order really differs from the serial one; unsigned values sit
/// near 2^64 so that sums wrap.
template <class V>
V value_at(int rank, std::size_t i) {
  const auto k = static_cast<std::uint64_t>(rank) * 7919u + i * 104729u;
  if constexpr (std::is_floating_point_v<V>) {
    return static_cast<V>(static_cast<double>(k % 2003) / 7.0 - 140.0);
  } else if constexpr (std::is_unsigned_v<V>) {
    return static_cast<V>(~std::uint64_t{0} - k * 0x9E3779B97F4A7C15u % 1000003u);
  } else {
    return static_cast<V>(static_cast<std::int64_t>(k % 2001) - 1000);
  }
}

template <class V>
std::vector<V> inputs(int rank, std::size_t size) {
  std::vector<V> v(size);
  for (std::size_t i = 0; i < size; ++i) v[i] = value_at<V>(rank, i);
  return v;
}

std::vector<std::size_t> test_sizes(int n) {
  return {0, 1, static_cast<std::size_t>(n - 1), 1000, std::size_t{1} << 18};
}

template <class V>
bool same_bytes(const std::vector<V>& a, const std::vector<V>& b) {
  return a.size() == b.size() &&
         (a.empty() || std::memcmp(a.data(), b.data(), a.size() * sizeof(V)) == 0);
}

bool contains(const std::string& text, const std::string& part) {
  return text.find(part) != std::string::npos;
}

std::vector<std::byte> block_of_rank(int rank, int iteration) {
  const std::size_t size = rank == 1 ? 0 : static_cast<std::size_t>(rank) * 300 + 1;
  std::vector<std::byte> v(size);
  for (std::size_t i = 0; i < size; ++i) {
    v[i] =
        static_cast<std::byte>((i + static_cast<std::size_t>(rank * 31 + iteration * 7)) & 0xffu);
  }
  return v;
}

/// thread_transport without its shared-memory collectives: the collectives
/// then run their message algorithms over its send and recv.
class messages_only {
 public:
  explicit messages_only(thread_transport& t) : t_(&t) {}
  [[nodiscard]] int rank() const { return t_->rank(); }
  [[nodiscard]] int size() const { return t_->size(); }
  [[nodiscard]] std::uint64_t bytes_sent() const { return t_->bytes_sent(); }
  void send(int to, ecopt::message_tag tag, std::span<const std::byte> data) {
    t_->send(to, tag, data);
  }
  void recv(int from, ecopt::message_tag tag, std::vector<std::byte>& into) {
    t_->recv(from, tag, into);
  }
  int recv_any(ecopt::message_tag tag, std::vector<std::byte>& into) {
    return t_->recv_any(tag, into);
  }

 private:
  thread_transport* t_;
};
static_assert(ecopt::Transport<messages_only>);

}  // namespace

TEST_CASE_TEMPLATE("allreduce_sum matches a serial sum, bitwise equal on every rank", V, float,
                   double, std::uint64_t, int) {
  for (const int n : {1, 2, 3, 4, 5, 8}) {
    for (const std::size_t size : test_sizes(n)) {
      CAPTURE(n);
      CAPTURE(size);
      const auto results = run_threads(n, [&](thread_transport& t) {
        std::vector<V> data = inputs<V>(t.rank(), size);
        collective_workspace ws;
        ecopt::allreduce_sum(t, std::span(data), ws);
        return data;
      });
      std::size_t wrong = 0;
      for (std::size_t i = 0; i < size; ++i) {
        V expected{};
        double magnitude = 0;
        for (int r = 0; r < n; ++r) {
          expected = static_cast<V>(expected + value_at<V>(r, i));
          magnitude += std::abs(static_cast<double>(value_at<V>(r, i)));
        }
        if constexpr (std::is_floating_point_v<V>) {
          const double tolerance = (std::is_same_v<V, float> ? 1e-6 : 1e-14) * magnitude * n;
          if (std::abs(static_cast<double>(results[0][i]) - static_cast<double>(expected)) >
              tolerance) {
            ++wrong;
          }
        } else if (results[0][i] != expected) {
          ++wrong;
        }
      }
      CHECK(wrong == 0);
      for (int r = 1; r < n; ++r)
        CHECK(same_bytes(results[static_cast<std::size_t>(r)], results[0]));
    }
  }
}

TEST_CASE_TEMPLATE("allreduce_max matches a serial maximum on every rank", V, float, double,
                   std::uint64_t, int) {
  for (const int n : {1, 2, 3, 4, 5, 8}) {
    for (const std::size_t size :
         {std::size_t{0}, std::size_t{1}, static_cast<std::size_t>(n - 1), std::size_t{1000}}) {
      CAPTURE(n);
      CAPTURE(size);
      const auto results = run_threads(n, [&](thread_transport& t) {
        std::vector<V> data = inputs<V>(t.rank(), size);
        collective_workspace ws;
        ecopt::allreduce_max(t, std::span(data), ws);
        return data;
      });
      std::vector<V> expected = inputs<V>(0, size);
      for (int r = 1; r < n; ++r) {
        const std::vector<V> other = inputs<V>(r, size);
        for (std::size_t i = 0; i < size; ++i) expected[i] = std::max(expected[i], other[i]);
      }
      for (const auto& result : results) CHECK(result == expected);
    }
  }
}

TEST_CASE("allreduce sends 2(n-1)/n of the data per rank") {
  constexpr std::size_t size = 120;  // divisible by every n below
  for (const int n : {1, 2, 3, 4, 5, 8}) {
    CAPTURE(n);
    const auto sent = run_threads(n, [&](thread_transport& t) {
      std::vector<double> data(size, 1.0);
      collective_workspace ws;
      ecopt::allreduce_sum(t, std::span(data), ws);
      return t.bytes_sent();
    });
    const auto expected = 2 * static_cast<std::uint64_t>(n - 1) * (size / n) * sizeof(double);
    for (const std::uint64_t bytes : sent) CHECK(bytes == expected);
  }
}

TEST_CASE("allreduce rejects ranks that disagree on the size or the element type") {
  // Sizes 10 and 12 doubles: thread_transport's shared-memory allreduce compares the ranks' sizes.
  try {
    run_threads(2, [](thread_transport& t) {
      std::vector<double> data(t.rank() == 0 ? 10 : 12, 1.0);
      collective_workspace ws;
      ecopt::allreduce_sum(t, std::span(data), ws);
    });
    FAIL("expected a transport_error");
  } catch (const ecopt::transport_error& e) {
    const std::string what = e.what();
    CAPTURE(what);
    CHECK(contains(what, "allreduce_sum"));
    const bool names_sizes = contains(what, "received 96 bytes from rank 1, expected 80") ||
                             contains(what, "received 80 bytes from rank 0, expected 96");
    CHECK(names_sizes);
  }

  // float and int are both 4 bytes: only the tag tells them apart.
  CHECK_THROWS_AS(run_threads(2,
                              [](thread_transport& t) {
                                collective_workspace ws;
                                if (t.rank() == 0) {
                                  std::vector<float> data(8, 1.0f);
                                  ecopt::allreduce_sum(t, std::span(data), ws);
                                } else {
                                  std::vector<int> data(8, 1);
                                  ecopt::allreduce_sum(t, std::span(data), ws);
                                }
                              }),
                  ecopt::transport_error);
}

TEST_CASE("ranks calling different collectives get a transport_error") {
  try {
    run_threads(2, [](thread_transport& t) {
      collective_workspace ws;
      if (t.rank() == 0) {
        ecopt::barrier(t, ws);
      } else {
        std::vector<double> data(4, 1.0);
        ecopt::allreduce_sum(t, std::span(data), ws);
      }
    });
    FAIL("expected a transport_error");
  } catch (const ecopt::transport_error& e) {
    CHECK(contains(e.what(), "protocol mismatch"));
  }
}

TEST_CASE("allgather_bytes collects blocks of different sizes, including empty ones") {
  // Over thread_transport's shared memory and over its messages (ring, or
  // recursive doubling for 4 and 8 ranks).
  auto check = [](auto& t) {
    int mismatches = 0;
    std::vector<std::vector<std::byte>> all;
    for (int iteration = 0; iteration < 3; ++iteration) {  // reuses `all`
      ecopt::allgather_bytes(t, block_of_rank(t.rank(), iteration), all);
      if (all.size() != static_cast<std::size_t>(t.size())) return -1;
      for (int r = 0; r < t.size(); ++r) {
        if (all[static_cast<std::size_t>(r)] != block_of_rank(r, iteration)) ++mismatches;
      }
    }
    // Every block empty.
    ecopt::allgather_bytes(t, {}, all);
    for (const auto& block : all) mismatches += block.empty() ? 0 : 1;
    return mismatches;
  };
  for (const int n : {1, 2, 3, 4, 5, 8}) {
    CAPTURE(n);
    const auto shared = run_threads(n, [&](thread_transport& t) { return check(t); });
    for (const int w : shared) CHECK(w == 0);
    const auto messages = run_threads(n, [&](thread_transport& t) {
      messages_only r(t);
      return check(r);
    });
    for (const int w : messages) CHECK(w == 0);
  }
}

TEST_CASE("allgather_bytes refuses a doubling message whose block sizes do not fit it") {
  // 4 ranks: rank 0 sends its partner (rank 1) messages in place of the first
  // doubling step's; rank 1 must name the fault, not copy out of bounds.
  const std::vector<std::vector<std::byte>> bad = {
      {std::byte{1}, std::byte{2}, std::byte{3}},                  // shorter than one 8-byte size
      {std::byte{200}, {}, {}, {}, {}, {}, {}, {}, std::byte{7}},  // size 200, 1 byte follows
      {std::byte{0}, {}, {}, {}, {}, {}, {}, {}, std::byte{7}},    // size 0, 1 byte follows
  };
  const std::vector<std::string> why = {"shorter than its 1 block sizes",
                                        "block sizes exceed the message",
                                        "block sizes do not add up to the message"};
  for (std::size_t c = 0; c < bad.size(); ++c) {
    CAPTURE(c);
    const auto errors = run_threads(
        4,
        [&](thread_transport& t) -> std::string {
          messages_only r(t);
          if (t.rank() == 0) {
            t.send(1, ecopt::collective_tag_for<>(ecopt::collective_tag::allgather_bytes),
                   std::span<const std::byte>(bad[c]));
            return "";
          }
          std::vector<std::vector<std::byte>> all;
          try {
            ecopt::allgather_bytes(r, block_of_rank(t.rank(), 1), all);
          } catch (const ecopt::transport_error& e) {
            return e.what();
          }
          return "no error";
        },
        {.timeout = 5s});
    CHECK(contains(errors[1], "allgather_bytes: rank 1 received a malformed message"));
    CHECK(contains(errors[1], "from rank 0: " + why[c]));
  }
}

TEST_CASE("allgather places fixed-size blocks in rank order") {
  for (int n = 1; n <= 5; ++n) {
    for (const std::size_t block :
         {std::size_t{0}, std::size_t{1}, std::size_t{3}, std::size_t{1000}}) {
      CAPTURE(n);
      CAPTURE(block);
      const auto results = run_threads(n, [&](thread_transport& t) {
        collective_workspace ws;
        const std::vector<double> mine = inputs<double>(t.rank(), block);
        std::vector<double> all(block * static_cast<std::size_t>(t.size()), -1.0);
        ecopt::allgather(t, std::span(mine), std::span(all), ws);
        // In place: the own block already sits in the output.
        std::vector<double> in_place(all.size(), -1.0);
        const auto own =
            std::span(in_place).subspan(block * static_cast<std::size_t>(t.rank()), block);
        std::copy(mine.begin(), mine.end(), own.begin());
        ecopt::allgather(t, std::span<const double>(own), std::span(in_place), ws);
        return std::pair{all, in_place};
      });
      std::vector<double> expected;
      for (int r = 0; r < n; ++r) {
        const auto v = inputs<double>(r, block);
        expected.insert(expected.end(), v.begin(), v.end());
      }
      for (const auto& [all, in_place] : results) {
        CHECK(all == expected);
        CHECK(in_place == expected);
      }
    }
  }

  CHECK_THROWS_AS(run_threads(2,
                              [](thread_transport& t) {
                                collective_workspace ws;
                                const std::vector<int> mine(3, 1);
                                std::vector<int> all(5);
                                ecopt::allgather(t, std::span(mine), std::span(all), ws);
                              }),
                  ecopt::invalid_argument);
}

TEST_CASE("broadcast delivers the root's data from every root") {
  for (int n = 1; n <= 5; ++n) {
    for (int root = 0; root < n; ++root) {
      for (const std::size_t size : {std::size_t{0}, std::size_t{1}, std::size_t{1000}}) {
        CAPTURE(n);
        CAPTURE(root);
        CAPTURE(size);
        const auto results = run_threads(n, [&](thread_transport& t) {
          collective_workspace ws;
          std::vector<std::int32_t> data = t.rank() == root ? inputs<std::int32_t>(root, size)
                                                            : std::vector<std::int32_t>(size, -7);
          ecopt::broadcast(t, std::span(data), root, ws);
          return std::pair{data, t.bytes_sent()};
        });
        const auto expected = inputs<std::int32_t>(root, size);
        std::uint64_t messages_bytes = 0;
        for (const auto& [data, sent] : results) {
          CHECK(data == expected);
          messages_bytes += sent;
        }
        // A tree: every rank but the root receives the data exactly once.
        CHECK(messages_bytes == static_cast<std::uint64_t>(n - 1) * size * sizeof(std::int32_t));
      }
    }
  }

  CHECK_THROWS_AS(run_threads(2,
                              [](thread_transport& t) {
                                collective_workspace ws;
                                std::vector<double> data(4);
                                ecopt::broadcast(t, std::span(data), 2, ws);
                              }),
                  ecopt::invalid_argument);
  CHECK_THROWS_AS(run_threads(2,
                              [](thread_transport& t) {
                                collective_workspace ws;
                                std::vector<double> data(t.rank() == 0 ? 4 : 5);
                                ecopt::broadcast(t, std::span(data), 0, ws);
                              }),
                  ecopt::transport_error);
}

TEST_CASE("shared-memory collectives give the message algorithms' bits and bytes") {
  // Same inputs through thread_transport's shared-memory collectives and
  // through the message algorithms (ring; halving-doubling for 4 and 8 ranks)
  // over its messages: results bitwise equal (the same reduction order),
  // bytes_sent() equal per rank.
  struct outcome {
    std::vector<float> sum_f;
    std::vector<double> max_d;
    std::vector<std::int16_t> gathered;
    std::vector<std::vector<std::byte>> blocks;
    std::vector<std::int32_t> broadcast;
    std::vector<std::uint64_t> bytes;  // after each collective
  };
  auto exercise = [](auto& t, int rank, std::size_t count) {
    outcome o;
    collective_workspace ws;
    o.sum_f = inputs<float>(rank, count);
    ecopt::allreduce_sum(t, std::span(o.sum_f), ws);
    o.bytes.push_back(t.bytes_sent());
    o.max_d = inputs<double>(rank, count);
    ecopt::allreduce_max(t, std::span(o.max_d), ws);
    o.bytes.push_back(t.bytes_sent());
    const std::vector<std::int16_t> mine = inputs<std::int16_t>(rank, count);
    o.gathered.assign(count * static_cast<std::size_t>(t.size()), 0);
    ecopt::allgather(t, std::span(mine), std::span(o.gathered), ws);
    o.bytes.push_back(t.bytes_sent());
    ecopt::allgather_bytes(t, block_of_rank(rank, 1), o.blocks);
    o.bytes.push_back(t.bytes_sent());
    o.broadcast = inputs<std::int32_t>(rank, count);
    ecopt::broadcast(t, std::span(o.broadcast), t.size() / 2, ws);
    o.bytes.push_back(t.bytes_sent());
    ecopt::barrier(t, ws);
    o.bytes.push_back(t.bytes_sent());
    return o;
  };
  for (const int n : {1, 2, 3, 4, 5, 8}) {
    for (const std::size_t count : test_sizes(n)) {
      CAPTURE(n);
      CAPTURE(count);
      const auto shared =
          run_threads(n, [&](thread_transport& t) { return exercise(t, t.rank(), count); });
      const auto ring = run_threads(n, [&](thread_transport& t) {
        messages_only r(t);
        return exercise(r, t.rank(), count);
      });
      for (int r = 0; r < n; ++r) {
        CAPTURE(r);
        const outcome& a = shared[static_cast<std::size_t>(r)];
        const outcome& b = ring[static_cast<std::size_t>(r)];
        CHECK(same_bytes(a.sum_f, b.sum_f));
        CHECK(same_bytes(a.max_d, b.max_d));
        CHECK(a.gathered == b.gathered);
        CHECK(a.blocks == b.blocks);
        CHECK(a.broadcast == b.broadcast);
        CHECK(a.bytes == b.bytes);
      }
    }
  }
}

TEST_CASE("a recv from a rank waiting in a collective fails at once, not at the timeout") {
  // (A timeout would say "timed out"; the message shows the mismatch was seen.)
  try {
    run_threads(3,
                [](thread_transport& t) {
                  collective_workspace ws;
                  std::vector<double> data(16, 1.0);
                  if (t.rank() == 2) {
                    std::vector<std::byte> into;
                    t.recv(0, 5,
                           into);  // rank 0 cannot send: it waits for this rank in the allreduce
                  }
                  ecopt::allreduce_sum(t, std::span(data), ws);
                },
                {.timeout = 60s});
    FAIL("expected a transport_error");
  } catch (const ecopt::transport_error& e) {
    CAPTURE(std::string(e.what()));
    CHECK(contains(e.what(), "rank 2: protocol mismatch: waiting for a message from rank 0"));
    CHECK(contains(e.what(), "waits in a collective"));
  }

  // A rank that returns instead of joining.
  try {
    run_threads(2,
                [](thread_transport& t) {
                  if (t.rank() == 1) return;
                  collective_workspace ws;
                  std::vector<float> data(4, 1.0f);
                  ecopt::allreduce_sum(t, std::span(data), ws);
                },
                {.timeout = 60s});
    FAIL("expected a transport_error");
  } catch (const ecopt::transport_error& e) {
    CAPTURE(std::string(e.what()));
    CHECK(contains(e.what(), "rank 0: rank 1 has returned without joining allreduce_sum"));
  }
}

TEST_CASE("no rank leaves a barrier before every rank has entered it") {
  constexpr int rounds = 4;
  for (int n = 1; n <= 5; ++n) {
    CAPTURE(n);
    std::atomic<int> arrived{0};
    const auto early = run_threads(n, [&](thread_transport& t) {
      collective_workspace ws;
      int left_early = 0;
      for (int k = 0; k < rounds; ++k) {
        // One rank per round comes late; a broken barrier would let the
        // others through before its arrival is counted.
        if (k % t.size() == t.rank()) std::this_thread::sleep_for(10ms);
        ++arrived;
        ecopt::barrier(t, ws);
        if (arrived.load() < t.size() * (k + 1)) ++left_early;
      }
      return left_early;
    });
    for (const int e : early) CHECK(e == 0);
    CHECK(arrived.load() == n * rounds);
  }
}

TEST_CASE("collectives do not allocate after warm-up on repeating sizes") {
  for (int n : {2, 3, 4}) {
    CAPTURE(n);
    std::latch all_sent(n);
    const auto counts = run_threads(n, [&](thread_transport& t) {
      const int right = (t.rank() + 1) % t.size();
      const int left = (t.rank() + t.size() - 1) % t.size();
      collective_workspace ws;
      std::vector<double> data(1000);
      std::vector<std::uint64_t> counters(37);
      const std::vector<std::byte> block = block_of_rank(t.rank(), 0);
      std::vector<std::vector<std::byte>> gathered;
      const std::vector<float> mine(100, static_cast<float>(t.rank()));
      std::vector<float> all(mine.size() * static_cast<std::size_t>(t.size()));
      double checksum = 0;
      auto iteration = [&] {
        std::fill(data.begin(), data.end(), 1.0);
        ecopt::allreduce_sum(t, std::span(data), ws);
        ecopt::allreduce_max(t, std::span(counters), ws);
        ecopt::allgather_bytes(t, block, gathered);
        ecopt::allgather(t, std::span(mine), std::span(all), ws);
        ecopt::broadcast(t, std::span(data), t.size() - 1, ws);
        ecopt::barrier(t, ws);
        checksum += data[0] + all.back();
      };
      // An inbox only gains buffers when more messages are in flight than
      // ever before; a burst of the largest message size, all in flight at
      // once, provisions more than these collectives can ever have in flight,
      // so the count below does not depend on the thread schedule.
      constexpr int burst = 16;
      const std::vector<std::byte> largest(data.size() * sizeof(double));
      for (int i = 0; i < burst; ++i) t.send(right, 0, largest);
      all_sent.arrive_and_wait();
      for (int i = 0; i < burst; ++i) t.recv(left, 0, ws.recv);
      for (int i = 0; i < 3; ++i) iteration();

      ecopt::test::allocation_scope scope;
      for (int i = 0; i < 20; ++i) iteration();
      return std::pair{scope.count(), checksum};
    });
    const double expected = 23.0 * (n + (n - 1));  // sum of ones, and the last rank's block
    for (const auto& [allocations, checksum] : counts) {
      CHECK(allocations == 0);
      CHECK(checksum == expected);
    }
  }
}

TEST_CASE("a solver-like loop stops allocating after ordinary warm-up steps") {
  // No provisioning burst here: three ranks on rings hold at most three
  // buffers in `into` vectors and have at most about three messages in
  // flight toward one rank, below the eight buffers an inbox makes the first
  // time it runs dry; so ten plain warm-up steps suffice on any schedule.
  for (int n : {2, 3}) {
    CAPTURE(n);
    const auto counts = run_threads(n, [](thread_transport& t) {
      collective_workspace ws;
      std::vector<double> x(64), loss(1);
      const std::vector<std::byte> payload(50 + 10 * static_cast<std::size_t>(t.rank()));
      std::vector<std::vector<std::byte>> gathered;
      std::uint64_t allocations = 0;
      std::optional<ecopt::test::allocation_scope> scope;
      for (int step = 0; step < 60; ++step) {
        if (step == 10) scope.emplace();
        std::fill(x.begin(), x.end(), 1.0);
        loss[0] = 0.5;
        ecopt::allgather_bytes(t, payload, gathered);
        ecopt::allreduce_sum(t, std::span(x), ws);
        ecopt::allreduce_sum(t, std::span(loss), ws);
      }
      allocations = scope->count();
      return std::pair{allocations, x[0] + loss[0]};
    });
    for (const auto& [allocations, value] : counts) {
      CHECK(allocations == 0);
      CHECK(value == 1.5 * n);
    }
  }
}

}  // namespace collectives_test
