// The Transport contract, checked on every transport: ranks run as threads of
// this process (support/transport_worlds.hpp), world sizes 1..4, messages of
// 0 B, 1 B, odd sizes, 1 MiB and 64 MiB; point-to-point delivery and FIFO
// order per pair, every collective against a brute-force result, recv_any,
// tag mismatches, invalid peers, deadlines, and a peer that fails or returns
// mid-round. A new transport joins by one entry in `all_worlds` below (and
// in `large_worlds`).
// The same file, built with ECOPT_TEST_MPI_WORLD=1 and run under
// `mpirun -np 4` (tests/CMakeLists.txt: mpi.contracts), checks mpi_transport:
// its ranks are processes, which is why ranks share nothing but messages
// (the barrier is checked with steady_clock, which processes on one machine share).
// Transport-specific behaviour (TCP framing and handshakes, run_threads,
// allocation-free steady states, the simulated clock) is tested in the
// transport's own file. Assertions run on the test's thread; rank functions
// only return what they saw.
//
// The 64 MiB cases run when ECOPT_TEST_LARGE is 1: by default, except under a
// sanitizer (ASan or TSan make them take several seconds per transport;
// build with -DECOPT_TEST_LARGE=1 to force them).
#include <doctest/doctest.h>

#include <algorithm>
#include <chrono>
#include <cstddef>
#include <cstdint>
#include <cstring>
#include <limits>
#include <span>
#include <stdexcept>
#include <string>
#include <thread>
#include <tuple>
#include <utility>
#include <vector>

#include "ecopt/collectives/allgather.hpp"
#include "ecopt/collectives/allreduce.hpp"
#include "ecopt/collectives/barrier.hpp"
#include "ecopt/collectives/broadcast.hpp"
#include "ecopt/collectives/collective_workspace.hpp"
#include "ecopt/error.hpp"
#include "ecopt/transport.hpp"
#include "support/transport_worlds.hpp"

// Everything of this file lives in its own namespace, so that test files can share a
// translation unit (the unity build in tests/CMakeLists.txt).
namespace transport_contracts_test {

#ifndef ECOPT_TEST_LARGE
#if defined(__SANITIZE_ADDRESS__) || defined(__SANITIZE_THREAD__)
#define ECOPT_TEST_LARGE 0
#elif defined(__has_feature)
#if __has_feature(address_sanitizer) || __has_feature(thread_sanitizer)
#define ECOPT_TEST_LARGE 0
#endif
#endif
#endif
#ifndef ECOPT_TEST_LARGE
#define ECOPT_TEST_LARGE 1
#endif

namespace {

using namespace std::chrono_literals;
using ecopt::collective_workspace;
using ecopt::message_tag;
using ecopt::test::simulated_world;
using ecopt::test::thread_world;

// Every transport the contract runs on: one entry each.
#if ECOPT_TEST_MPI_WORLD
using ecopt::test::mpi_world;
using all_worlds = std::tuple<mpi_world, simulated_world<mpi_world>>;
using large_worlds = std::tuple<mpi_world>;
#else
using all_worlds = std::tuple<thread_world, simulated_world<thread_world>
#if ECOPT_TEST_HAVE_TCP
                              ,
                              ecopt::test::tcp_world, simulated_world<ecopt::test::tcp_world>
#endif
                              >;

// The 64 MiB case skips simulated_transport over TCP: it adds nothing to its
// two parts' own runs but another few seconds.
using large_worlds = std::tuple<thread_world, simulated_world<thread_world>
#if ECOPT_TEST_HAVE_TCP
                                ,
                                ecopt::test::tcp_world
#endif
                                >;
#endif

bool contains(const std::string& text, const std::string& part) {
  return text.find(part) != std::string::npos;
}

/// a == b, by memcmp: an element-wise loop over std::byte costs
/// ThreadSanitizer a check per byte.
bool same_bytes(const std::vector<std::byte>& a, const std::vector<std::byte>& b) {
  return a.size() == b.size() && (a.empty() || std::memcmp(a.data(), b.data(), a.size()) == 0);
}

/// size bytes determined by seed, 8 at a time (splitmix64), fast enough for 64 MiB.
std::vector<std::byte> pattern(std::size_t size, std::uint64_t seed) {
  std::vector<std::byte> v(size);
  std::uint64_t state = seed * 0x9E3779B97F4A7C15ull + 0x632BE59BD9B4E019ull;
  for (std::size_t at = 0; at < size; at += 8) {
    std::uint64_t z = (state += 0x9E3779B97F4A7C15ull);
    z = (z ^ (z >> 30)) * 0xBF58476D1CE4E5B9ull;
    z = (z ^ (z >> 27)) * 0x94D049BB133111EBull;
    z ^= z >> 31;
    std::memcpy(v.data() + at, &z, std::min<std::size_t>(8, size - at));
  }
  return v;
}

std::uint64_t seed_of(int from, int to, std::size_t index) {
  return static_cast<std::uint64_t>(from) * 1'000'003u + static_cast<std::uint64_t>(to) * 1009u +
         index;
}

/// Rank r's i-th input to the reducing collectives: small values whose sums
/// are exact in every type used here, negative ones included.
template <class V>
V input(int r, std::size_t i) {
  const auto k = static_cast<long long>((i * 37 + static_cast<std::size_t>(r) * 101) % 1001);
  if constexpr (std::is_floating_point_v<V>) {
    return static_cast<V>(k - 500) + static_cast<V>(0.25) * static_cast<V>(r);
  } else if constexpr (std::is_unsigned_v<V>) {
    return static_cast<V>(k * 997 + r);  // wraps as V, and so do the sums
  } else {
    return static_cast<V>(k - 500 + 3 * r);
  }
}

/// The serial reference: the sum or maximum over ranks 0..n-1.
template <class V>
std::vector<V> reference(int n, std::size_t count, bool max) {
  std::vector<V> out(count);
  for (std::size_t i = 0; i < count; ++i) {
    V acc = input<V>(0, i);
    for (int q = 1; q < n; ++q) {
      const V x = input<V>(q, i);
      acc = max ? std::max(acc, x) : static_cast<V>(acc + x);
    }
    out[i] = acc;
  }
  return out;
}

/// Runs allreduce_sum and allreduce_max on count elements and compares them
/// with the references (computed here unless given).
template <class V, class Tr>
void check_allreduce(Tr& t, std::size_t count, collective_workspace& ws,
                     std::vector<std::string>& wrong, const std::vector<V>* sum = nullptr,
                     const std::vector<V>* max_of = nullptr) {
  const int n = t.size();
  for (bool max : {false, true}) {
    std::vector<V> v(count);
    for (std::size_t i = 0; i < count; ++i) v[i] = input<V>(t.rank(), i);
    if (max) {
      ecopt::allreduce_max(t, std::span(v), ws);
    } else {
      ecopt::allreduce_sum(t, std::span(v), ws);
    }
    const std::vector<V>* given = max ? max_of : sum;
    if (given != nullptr ? v != *given : v != reference<V>(n, count, max)) {
      wrong.push_back(std::string(max ? "allreduce_max" : "allreduce_sum") + "<" +
                      std::to_string(sizeof(V)) + "-byte> of " + std::to_string(count));
    }
  }
}

/// The large test's data: two 64 MiB messages and 64 MiB of floats per rank.
struct large_data {
  static constexpr std::size_t bytes = std::size_t{64} << 20;
  std::vector<std::byte> message[2]{pattern(bytes, 1), pattern(bytes, 2)};
  std::vector<std::vector<float>> floats =
      std::vector<std::vector<float>>(4, std::vector<float>(bytes / sizeof(float)));
};

large_data& large_buffers() {
  static large_data data;
  return data;
}

}  // namespace

}  // namespace transport_contracts_test

// doctest's type names are specialisations in its own namespace.
#if ECOPT_TEST_MPI_WORLD
TYPE_TO_STRING(ecopt::test::mpi_world);
TYPE_TO_STRING(ecopt::test::simulated_world<ecopt::test::mpi_world>);
#else
TYPE_TO_STRING(ecopt::test::thread_world);
TYPE_TO_STRING(ecopt::test::simulated_world<ecopt::test::thread_world>);
#if ECOPT_TEST_HAVE_TCP
TYPE_TO_STRING(ecopt::test::tcp_world);
TYPE_TO_STRING(ecopt::test::simulated_world<ecopt::test::tcp_world>);
#endif
#endif

namespace transport_contracts_test {

TEST_CASE_TEMPLATE_DEFINE("transport: rank and size; peers must be other ranks of the world", W,
                          identity_contract) {
  for (int n = 1; n <= 4; ++n) {
    CAPTURE(n);
    const auto w = W::run(n, [](auto& t) {
      std::vector<int> seen{static_cast<int>(t.rank()), static_cast<int>(t.size())};
      int refused = 0;
      std::vector<std::byte> into;
      for (int peer : {-1, static_cast<int>(t.size()), static_cast<int>(t.rank())}) {
        try {
          t.send(peer, 1, {});
        } catch (const ecopt::invalid_argument&) {
          ++refused;
        }
        try {
          t.recv(peer, 1, into);
        } catch (const ecopt::invalid_argument&) {
          ++refused;
        }
      }
      seen.push_back(refused);
      seen.push_back(static_cast<int>(t.bytes_sent()));
      if (t.size() == 1) {
        try {
          (void)t.recv_any(1, into);
        } catch (const ecopt::invalid_argument&) {
          seen.push_back(-1);  // nobody to receive from
        }
      }
      return seen;
    });
    REQUIRE_MESSAGE(w.all_ok(), w.error_text());
    for (int r = 0; r < n; ++r) {
      std::vector<int> want{r, n, 6, 0};
      if (n == 1) want.push_back(-1);
      CHECK(*w.values[static_cast<std::size_t>(r)] == want);
    }
  }
}
TEST_CASE_TEMPLATE_APPLY(identity_contract, all_worlds);

TEST_CASE_TEMPLATE_DEFINE("transport: messages of 0 B to 1 MiB arrive intact, FIFO per pair", W,
                          point_to_point_contract) {
  // Every rank sends every size to every peer, tags alternating, then drains
  // its peers in descending rank order (the opposite of any natural order).
  const std::vector<std::size_t> sizes{0, 1, 3, 1, 4097, 0, 65537, std::size_t{1} << 20, 7};
  std::uint64_t per_peer = 0;
  for (std::size_t s : sizes) per_peer += s;
  for (int n = 2; n <= 4; ++n) {
    CAPTURE(n);
    // Every message's bytes, made once here: the ranks only send and compare.
    std::vector<std::vector<std::byte>> messages;
    auto message = [&](int from, int to, std::size_t i) -> const std::vector<std::byte>& {
      return messages[(static_cast<std::size_t>(from * n + to)) * sizes.size() + i];
    };
    for (int from = 0; from < n; ++from) {
      for (int to = 0; to < n; ++to) {
        for (std::size_t i = 0; i < sizes.size(); ++i) {
          messages.push_back(from == to ? std::vector<std::byte>{}
                                        : pattern(sizes[i], seed_of(from, to, i)));
        }
      }
    }
    const auto w = W::run(n, [&](auto& t) {
      std::vector<std::string> wrong;
      const int me = t.rank();
      for (int to = 0; to < n; ++to) {
        if (to == me) continue;
        for (std::size_t i = 0; i < sizes.size(); ++i) {
          t.send(to, static_cast<message_tag>(i % 2 + 10), message(me, to, i));
        }
      }
      // Stale contents and capacity of `into` must not leak into what recv returns.
      std::vector<std::byte> into(3000, std::byte{0xee});
      for (int from = n - 1; from >= 0; --from) {
        if (from == me) continue;
        for (std::size_t i = 0; i < sizes.size(); ++i) {
          t.recv(from, static_cast<message_tag>(i % 2 + 10), into);
          if (!same_bytes(into, message(from, me, i))) {
            wrong.push_back("message " + std::to_string(i) + " from rank " + std::to_string(from));
          }
        }
      }
      if (t.bytes_sent() != per_peer * static_cast<std::uint64_t>(n - 1)) {
        wrong.push_back("bytes_sent " + std::to_string(t.bytes_sent()));
      }
      return wrong;
    });
    REQUIRE_MESSAGE(w.all_ok(), w.error_text());
    for (const auto& wrong : w.values) CHECK(*wrong == std::vector<std::string>{});
  }
}
TEST_CASE_TEMPLATE_APPLY(point_to_point_contract, all_worlds);

TEST_CASE_TEMPLATE_DEFINE("transport: 64 MiB point-to-point (world 2) and allreduce (2..4)" *
                              doctest::skip(!ECOPT_TEST_LARGE),
                          W, large_contract) {
  // Fresh 64 MiB buffers cost mostly page faults, so the test's own ones are
  // made once per process and reused; the transports' are their own.
  auto& large = large_buffers();
  for (int n = 2; n <= 4; ++n) {
    CAPTURE(n);
    const auto w = W::run(n, [&](auto& t) {
      std::vector<std::string> wrong;
      const int me = t.rank();
      // World 2: the ranks swap 64 MiB (both directions of a link at once).
      if (t.size() == 2) {
        const int peer = 1 - me;
        t.send(peer, 1, large.message[me]);
        std::vector<std::byte> into;
        t.recv(peer, 1, into);
        if (!same_bytes(into, large.message[peer])) wrong.push_back("64 MiB message");
      }
      // 64 MiB of floats, summed over the ring: small integers, exact.
      collective_workspace ws;
      std::vector<float>& v = large.floats[static_cast<std::size_t>(me)];
      for (std::size_t i = 0; i < v.size(); ++i) v[i] = static_cast<float>(i % 13 + me);
      ecopt::allreduce_sum(t, std::span(v), ws);
      for (std::size_t i = 0; i < v.size(); ++i) {
        if (v[i] != static_cast<float>(n * static_cast<int>(i % 13) + n * (n - 1) / 2)) {
          wrong.push_back("allreduce_sum at " + std::to_string(i));
          break;
        }
      }
      return wrong;
    });
    REQUIRE_MESSAGE(w.all_ok(), w.error_text());
    for (const auto& wrong : w.values) CHECK(*wrong == std::vector<std::string>{});
  }
}
TEST_CASE_TEMPLATE_APPLY(large_contract, large_worlds);

TEST_CASE_TEMPLATE_DEFINE("transport: every collective agrees with a brute-force result", W,
                          collectives_contract) {
  // Element counts 0, 1, fewer than the ranks, odd, and 1 MiB + 12 B of floats.
  const std::vector<std::size_t> counts{0, 1, 3, 1001};
  const std::size_t mib_floats = (std::size_t{1} << 18) + 3;
  const std::size_t block_sizes[] = {0, 1, 4099, std::size_t{1} << 20};
  for (int n = 1; n <= 4; ++n) {
    CAPTURE(n);
    // The large cases' expectations, made once here rather than on every rank.
    const std::vector<float> mib_sum = reference<float>(n, mib_floats, false);
    const std::vector<float> mib_max = reference<float>(n, mib_floats, true);
    // allgather_bytes: in turn t, rank q's block has block_sizes[(q + t) % 4] bytes.
    std::vector<std::vector<std::vector<std::byte>>> turns(4);
    for (int turn = 0; turn < 4; ++turn) {
      for (int q = 0; q < n; ++q) {
        turns[static_cast<std::size_t>(turn)].push_back(
            pattern(block_sizes[static_cast<std::size_t>((q + turn) % 4)], seed_of(q, turn, 7)));
      }
    }
    const auto w = W::run(n, [&](auto& t) {
      std::vector<std::string> wrong;
      const int r = t.rank();
      collective_workspace ws;
      for (std::size_t count : counts) {
        check_allreduce<double>(t, count, ws, wrong);
        check_allreduce<float>(t, count, ws, wrong);
        check_allreduce<std::int64_t>(t, count, ws, wrong);
        check_allreduce<std::int32_t>(t, count, ws, wrong);
        // 1- and 2-byte elements, wrapping sums (Open MPI's AVX MPI_SUM saturates them).
        check_allreduce<std::uint8_t>(t, count, ws, wrong);
        check_allreduce<std::uint16_t>(t, count, ws, wrong);
      }
      check_allreduce<float>(t, mib_floats, ws, wrong, &mib_sum, &mib_max);

      // allgather: equal blocks of every count.
      for (std::size_t count : counts) {
        std::vector<std::int16_t> mine(count), all(count * static_cast<std::size_t>(n));
        for (std::size_t i = 0; i < count; ++i) mine[i] = input<std::int16_t>(r, i);
        ecopt::allgather(t, std::span<const std::int16_t>(mine), std::span(all), ws);
        for (int q = 0; q < n; ++q) {
          for (std::size_t i = 0; i < count; ++i) {
            if (all[static_cast<std::size_t>(q) * count + i] != input<std::int16_t>(q, i)) {
              wrong.push_back("allgather of " + std::to_string(count) + ": block " +
                              std::to_string(q));
              break;
            }
          }
        }
      }
      // allgather_bytes: blocks of different sizes (0 B, 1 B, odd, 1 MiB),
      // each rank taking each size in turn.
      std::vector<std::vector<std::byte>> blocks;
      for (int turn = 0; turn < 4; ++turn) {
        const auto& expected = turns[static_cast<std::size_t>(turn)];
        ecopt::allgather_bytes(t, expected[static_cast<std::size_t>(r)], blocks);
        for (int q = 0; q < n; ++q) {
          if (!same_bytes(blocks[static_cast<std::size_t>(q)],
                          expected[static_cast<std::size_t>(q)])) {
            wrong.push_back("allgather_bytes turn " + std::to_string(turn) + ": block " +
                            std::to_string(q));
          }
        }
      }
      // broadcast from every root.
      for (int root = 0; root < n; ++root) {
        for (std::size_t count : counts) {
          std::vector<std::int32_t> data(count, -7);
          if (r == root) {
            for (std::size_t i = 0; i < count; ++i) data[i] = input<std::int32_t>(root, i);
          }
          ecopt::broadcast(t, std::span(data), root, ws);
          for (std::size_t i = 0; i < count; ++i) {
            if (data[i] != input<std::int32_t>(root, i)) {
              wrong.push_back("broadcast of " + std::to_string(count) + " from " +
                              std::to_string(root));
              break;
            }
          }
        }
      }
      // barrier: ranks arrive 3 ms apart; each notes when it arrived and left.
      std::vector<std::int64_t> times;
      for (int k = 0; k < 3; ++k) {
        std::this_thread::sleep_for(std::chrono::milliseconds(3 * r));
        times.push_back(std::chrono::steady_clock::now().time_since_epoch().count());
        ecopt::barrier(t, ws);
        times.push_back(std::chrono::steady_clock::now().time_since_epoch().count());
      }
      return std::pair{wrong, times};
    });
    REQUIRE_MESSAGE(w.all_ok(), w.error_text());
    for (int r = 0; r < n; ++r) {
      CAPTURE(r);
      const std::vector<std::string>& wrong = w.values[static_cast<std::size_t>(r)]->first;
      CHECK_MESSAGE(wrong.empty(), (wrong.empty() ? std::string() : wrong.front())
                                       << " and " << wrong.size() << " in all");
    }
    // Nobody left a barrier before everybody had arrived at it.
    for (std::size_t k = 0; k < 3; ++k) {
      std::int64_t last_arrival = 0;
      std::int64_t first_departure = std::numeric_limits<std::int64_t>::max();
      for (const auto& v : w.values) {
        last_arrival = std::max(last_arrival, v->second[2 * k]);
        first_departure = std::min(first_departure, v->second[2 * k + 1]);
      }
      CAPTURE(k);
      CHECK(last_arrival <= first_departure);
    }
  }
}
TEST_CASE_TEMPLATE_APPLY(collectives_contract, all_worlds);

TEST_CASE_TEMPLATE_DEFINE("transport: recv_any takes the earliest matching head from any rank", W,
                          recv_any_contract) {
  static_assert(ecopt::RecvAnyTransport<ecopt::thread_transport>);
  for (int n = 2; n <= 4; ++n) {
    CAPTURE(n);
    const auto w = W::run(n, [](auto& t) {
      std::vector<int> seen;
      std::vector<std::byte> into;
      if (t.rank() == 0) {
        // Rank 1's head has tag 8, so its tag-9 message waits behind it.
        for (int i = 2; i < t.size(); ++i) {
          const int from = t.recv_any(9, into);
          seen.push_back(from);
          seen.push_back(into.size() == 1 ? static_cast<int>(into[0]) : -1);
        }
        t.recv(1, 8, into);
        seen.push_back(t.recv_any(9, into));
        // Everyone else returns next: nothing more can come.
        try {
          (void)t.recv_any(9, into);
        } catch (const ecopt::transport_error& e) {
          seen.push_back(contains(e.what(), "rank 0: every other rank has") ? -1 : -2);
        }
      } else {
        const auto me = static_cast<std::byte>(t.rank());
        if (t.rank() == 1) t.send(0, 8, {});
        t.send(0, 9, std::span(&me, 1));
      }
      return seen;
    });
    REQUIRE_MESSAGE(w.all_ok(), w.error_text());
    const std::vector<int>& s = *w.values[0];
    REQUIRE(s.size() == 2 * static_cast<std::size_t>(n - 2) + 2);
    std::vector<int> senders;
    for (int i = 0; i < n - 2; ++i) {
      const auto k = static_cast<std::size_t>(2 * i);
      CHECK(s[k + 1] == s[k]);  // the sender's own payload
      senders.push_back(s[k]);
    }
    std::sort(senders.begin(), senders.end());
    for (int i = 0; i < n - 2; ++i) CHECK(senders[static_cast<std::size_t>(i)] == i + 2);
    CHECK(s[s.size() - 2] == 1);
    CHECK(s.back() == -1);
  }
}
TEST_CASE_TEMPLATE_APPLY(recv_any_contract, all_worlds);

TEST_CASE_TEMPLATE_DEFINE("transport: a message with an unexpected tag is a transport_error", W,
                          tag_mismatch_contract) {
  const auto w = W::run(2, [](auto& t) {
    std::vector<std::byte> into;
    if (t.rank() == 0) {
      t.send(1, 5, {});
    } else {
      t.recv(0, 3, into);
    }
  });
  CHECK(w.threw_transport_error(1));
  CHECK(contains(w.errors[1], "rank 1: protocol mismatch: expected tag 3 from rank 0"));
  CHECK(contains(w.errors[1], "tag 5"));
}
TEST_CASE_TEMPLATE_APPLY(tag_mismatch_contract, all_worlds);

TEST_CASE_TEMPLATE_DEFINE("transport: a recv nobody answers fails at the deadline", W,
                          deadline_contract) {
  // Every rank waits for its right neighbour, which waits too.
  for (int n = 2; n <= 3; ++n) {
    CAPTURE(n);
    const auto start = std::chrono::steady_clock::now();
    const auto w = W::run(
        n,
        [](auto& t) {
          std::vector<std::byte> into;
          t.recv((t.rank() + 1) % t.size(), 3, into);
        },
        250ms);
    const auto elapsed = std::chrono::steady_clock::now() - start;
    CHECK(elapsed >= 250ms);  // not before the deadline
    CHECK(elapsed < 30s);     // loosely: long before the default one
    // The first rank to time out names the peer and tag; the others may
    // report that rank's failure instead. Either way every rank woke up.
    int timed_out = 0;
    for (int r = 0; r < n; ++r) {
      const std::string& what = w.errors[static_cast<std::size_t>(r)];
      CAPTURE(what);
      CHECK(w.threw_transport_error(r));
      CHECK(contains(what, "rank " + std::to_string(r) + ":"));
      if (contains(what, "timed out after 250 ms")) {
        ++timed_out;
        CHECK(contains(
            what, "waiting for a message from rank " + std::to_string((r + 1) % n) + " (tag 3)"));
      }
    }
    CHECK(timed_out >= 1);
  }
}
TEST_CASE_TEMPLATE_APPLY(deadline_contract, all_worlds);

TEST_CASE_TEMPLATE_DEFINE("transport: a rank that throws mid-round fails every peer, naming it", W,
                          failure_contract) {
  for (int n = 2; n <= 4; ++n) {
    CAPTURE(n);
    const auto w = W::run(n, [](auto& t) {
      collective_workspace ws;
      std::vector<double> v(1000, 1.0);
      for (int round = 0; round < 100; ++round) {
        if (t.rank() == 1 && round == 3) throw std::runtime_error("worker exploded");
        ecopt::allreduce_sum(t, std::span(v), ws);
      }
    });
    CHECK(w.errors[1] == "worker exploded");
    for (int r = 0; r < n; ++r) {
      if (r == 1) continue;
      const std::string& what = w.errors[static_cast<std::size_t>(r)];
      CAPTURE(what);
      CHECK(w.threw_transport_error(r));
      CHECK(contains(what, "rank " + std::to_string(r) + ": "));
      CHECK(contains(what, "peer rank 1 failed"));
    }
  }
}
TEST_CASE_TEMPLATE_APPLY(failure_contract, all_worlds);

TEST_CASE_TEMPLATE_DEFINE("transport: a rank that returns mid-round fails the rank waiting on it",
                          W, early_return_contract) {
  for (int n = 2; n <= 4; ++n) {
    CAPTURE(n);
    const int quitter = n - 1;
    const auto w = W::run(n, [quitter](auto& t) {
      collective_workspace ws;
      std::vector<double> v(1000, 1.0);
      for (int round = 0; round < 100; ++round) {
        if (t.rank() == quitter && round == 3) return round;
        ecopt::allreduce_sum(t, std::span(v), ws);
      }
      return 100;
    });
    CHECK(w.errors[static_cast<std::size_t>(quitter)].empty());
    // The first rank to notice (rank 0 waits on the quitter in the ring; a
    // rank sending to it may notice first) names it; the others may report
    // that rank's failure instead.
    int named = 0;
    for (int r = 0; r < quitter; ++r) {
      const std::string& what = w.errors[static_cast<std::size_t>(r)];
      CAPTURE(what);
      CHECK(w.threw_transport_error(r));
      CHECK(contains(what, "rank " + std::to_string(r) + ": "));
      if (contains(what, "rank " + std::to_string(quitter) + " has ")) ++named;
    }
    CHECK(named >= 1);
  }
}
TEST_CASE_TEMPLATE_APPLY(early_return_contract, all_worlds);

}  // namespace transport_contracts_test
