// simulated_transport: the alpha-beta clock on hand-computed scenarios (a
// ping-pong, a ring allreduce against 2(P-1)(alpha + n/(P beta)), per-link
// overrides, modelled compute), its trailer and the errors of a malformed one,
// a solver run whose report carries the modelled time, and the
// allocation-free steady state. The model's
// figures are powers of two, so every expected clock below is exact in
// floating point and compared with ==. Assertions run on the test's thread.
#include <doctest/doctest.h>

#include <Eigen/Core>
#include <bit>
#include <cmath>
#include <cstddef>
#include <cstdint>
#include <functional>
#include <latch>
#include <limits>
#include <span>
#include <string>
#include <vector>

#include "ecopt/collectives/allreduce.hpp"
#include "ecopt/collectives/collective_workspace.hpp"
#include "ecopt/error.hpp"
#include "ecopt/problems/quadratic.hpp"
#include "ecopt/solver.hpp"
#include "ecopt/transports/simulated_transport.hpp"
#include "ecopt/transports/thread_transport.hpp"
#include "support/alloc_counter.hpp"

// Everything of this file lives in its own namespace, so that test files can share a
// translation unit (the unity build in tests/CMakeLists.txt).
namespace simulated_transport_test {

namespace {

using ecopt::link_cost;
using ecopt::network_model;
using ecopt::run_threads;
using ecopt::simulated_transport;
using ecopt::thread_transport;
using sim = simulated_transport<thread_transport>;

static_assert(ecopt::Transport<sim> && ecopt::RecvAnyTransport<sim> && ecopt::TimedTransport<sim>);
static_assert(!ecopt::TimedTransport<thread_transport>);

// alpha = 2^-10 s, beta = 2^20 B/s: 1 KiB takes 2^-10 s to inject.
constexpr double alpha = 1.0 / 1024;
constexpr double beta = 1024.0 * 1024.0;
const network_model model = network_model::uniform(alpha, beta);

bool contains(const std::string& text, const std::string& part) {
  return text.find(part) != std::string::npos;
}

/// What a rank saw: its clock and payload bytes, and the inner transport's bytes.
struct clocks {
  double seconds = 0;
  std::uint64_t bytes = 0;
  std::uint64_t inner_bytes = 0;
};

clocks clocks_of(const sim& s) {
  return {s.modelled_seconds(), s.bytes_sent(), s.inner().bytes_sent()};
}

std::string error_of(const std::function<void()>& f) {
  try {
    f();
  } catch (const ecopt::error& e) {
    return e.what();
  }
  return "no error";
}

}  // namespace

TEST_CASE("network_model: default link, directed overrides, presets and validation") {
  network_model m = network_model::uniform(1e-3, 1e6);
  CHECK(m.link(0, 1) == link_cost{1e-3, 1e6});
  m.set_link(0, 1, {2e-3, 5e5}).set_link(2, 0, {0, 1e9});
  CHECK(m.link(0, 1) == link_cost{2e-3, 5e5});
  CHECK(m.link(1, 0) == link_cost{1e-3, 1e6});  // directed: the reverse keeps the default
  CHECK(m.link(2, 0) == link_cost{0, 1e9});
  m.set_link(0, 1, {3e-3, 1e6});  // replaces, does not append
  CHECK(m.overrides.size() == 2);
  CHECK(m.link(0, 1) == link_cost{3e-3, 1e6});
  CHECK(link_cost{1e-3, 1e6}.transfer_seconds(2000) == doctest::Approx(3e-3).epsilon(1e-15));
  CHECK(link_cost{}.transfer_seconds(1u << 30) == 0.0);  // the default link is free

  CHECK(network_model::ethernet_1g().default_link.bytes_per_second == 1e9 / 8);
  CHECK(network_model::ethernet_10g().default_link.bytes_per_second == 1e10 / 8);
  CHECK(network_model::ethernet_100g().default_link.bytes_per_second == 1e11 / 8);
  CHECK(network_model::ethernet_100g().default_link.latency_seconds <
        network_model::ethernet_1g().default_link.latency_seconds);

  CHECK_NOTHROW(m.validate(3));
  CHECK(contains(error_of([&] { m.validate(2); }), "overrides[1] (2 -> 0)"));
  CHECK(contains(error_of([] { network_model::uniform(-1e-3, 1e6).validate(); }),
                 "default_link: latency_seconds"));
  CHECK(contains(error_of([] { network_model::uniform(0, 0).validate(); }), "bytes_per_second"));
  CHECK(contains(error_of([] {
                   network_model::uniform(0, std::numeric_limits<double>::quiet_NaN()).validate();
                 }),
                 "bytes_per_second"));
  network_model self = model;
  self.set_link(1, 1, {0, 1});
  CHECK(contains(error_of([&] { self.validate(); }), "two different ranks"));
  // The transport validates its model against the world.
  CHECK_THROWS_AS(run_threads(2, [&](thread_transport& t) { sim s(t, m); }),
                  ecopt::invalid_argument);
}

TEST_CASE("a ping-pong charges latency and injection time exactly") {
  // Rank 0 sends 1 KiB, rank 1 answers with 512 B, ten times. One round trip:
  // 1024/beta + alpha + 512/beta + alpha = 3.5 * 2^-10 s.
  constexpr int rounds = 10;
  const auto seen = run_threads(2, [&](thread_transport& t) {
    sim s(t, model);
    std::vector<clocks> trace;
    std::vector<std::byte> into;
    const std::vector<std::byte> ping(1024, std::byte{1}), pong(512, std::byte{2});
    for (int i = 0; i < rounds; ++i) {
      if (s.rank() == 0) {
        s.send(1, 3, ping);
        trace.push_back(clocks_of(s));
        s.recv(1, 4, into);
        if (into != pong) trace.push_back({-1, 0, 0});
      } else {
        s.recv(0, 3, into);
        if (into != ping) trace.push_back({-1, 0, 0});
        trace.push_back(clocks_of(s));
        s.send(0, 4, pong);
      }
      trace.push_back(clocks_of(s));
    }
    return trace;
  });
  const double unit = 1.0 / 1024;  // 1 KiB / beta = alpha
  REQUIRE(seen[0].size() == 2 * rounds);
  REQUIRE(seen[1].size() == 2 * rounds);
  for (int i = 0; i < rounds; ++i) {
    CAPTURE(i);
    const double start = 3.5 * unit * i;
    const auto k = static_cast<std::size_t>(2 * i);
    CHECK(seen[0][k].seconds == start + unit);            // after injecting 1 KiB
    CHECK(seen[1][k].seconds == start + 2 * unit);        // + alpha
    CHECK(seen[1][k + 1].seconds == start + 2.5 * unit);  // after injecting 512 B
    CHECK(seen[0][k + 1].seconds == start + 3.5 * unit);  // + alpha
    CHECK(seen[0][k + 1].bytes == 1024u * (i + 1));       // payload bytes only
    CHECK(seen[0][k + 1].inner_bytes == (1024u + sim::trailer_bytes) * (i + 1));
    CHECK(seen[1][k + 1].bytes == 512u * (i + 1));
  }
}

TEST_CASE("an allreduce takes 2(P-1)/P n/beta plus 2(P-1) or 2 log2(P) latencies on every rank") {
  // The ring: 2(P-1) steps of one chunk each. Halving-doubling (P = 4, 8):
  // 2 log2(P) steps whose messages add up to the same bytes.
  for (int p = 2; p <= 8; ++p) {
    CAPTURE(p);
    // n bytes of floats, split in p equal chunks.
    const std::size_t floats = 3 * 1024 * static_cast<std::size_t>(p);
    const std::size_t n = 4 * floats;
    const auto seen = run_threads(p, [&](thread_transport& t) {
      sim s(t, model);
      ecopt::collective_workspace ws;
      std::vector<float> v(floats, static_cast<float>(s.rank() + 1));
      ecopt::allreduce_sum(s, std::span(v), ws);
      const float want = static_cast<float>(p * (p + 1) / 2);
      for (float x : v) {
        if (x != want) return clocks{-1, 0, 0};
      }
      return clocks_of(s);
    });
    const bool halving = p == 4 || p == 8;
    const double steps = halving ? 2.0 * std::log2(static_cast<double>(p)) : 2.0 * (p - 1);
    const double expected =
        steps * alpha + 2.0 * (p - 1) * static_cast<double>(n) / (static_cast<double>(p) * beta);
    for (const clocks& c : seen) {
      CHECK(c.seconds == doctest::Approx(expected).epsilon(1e-12));
      CHECK(c.bytes == 2 * static_cast<std::uint64_t>(p - 1) * n / static_cast<std::uint64_t>(p));
    }
  }
}

TEST_CASE("an allgather_bytes takes P-1 or log2(P) latencies; doubling adds 8 bytes a block") {
  // Ring: P-1 steps of one block. Recursive doubling (P = 4, 8): log2(P)
  // steps, d blocks and their d sizes in the step with distance d.
  constexpr std::size_t block = 3000;
  for (int p = 2; p <= 8; ++p) {
    CAPTURE(p);
    const auto seen = run_threads(p, [&](thread_transport& t) {
      sim s(t, model);
      std::vector<std::vector<std::byte>> all;
      const std::vector<std::byte> mine(block, static_cast<std::byte>(s.rank()));
      ecopt::allgather_bytes(s, mine, all);
      for (int r = 0; r < p; ++r) {
        if (all[static_cast<std::size_t>(r)] !=
            std::vector<std::byte>(block, static_cast<std::byte>(r))) {
          return clocks{-1, 0, 0};
        }
      }
      return clocks_of(s);
    });
    const bool doubling = p == 4 || p == 8;
    const double steps = doubling ? std::log2(static_cast<double>(p)) : p - 1.0;
    const std::uint64_t bytes = static_cast<std::uint64_t>(p - 1) * (block + (doubling ? 8 : 0));
    const double expected = steps * alpha + static_cast<double>(bytes) / beta;
    for (const clocks& c : seen) {
      CHECK(c.seconds == doctest::Approx(expected).epsilon(1e-12));
      CHECK(c.bytes == bytes);
    }
  }
}

TEST_CASE("per-link overrides: sends serialize on the sender, links cost their own") {
  // Rank 0 sends 1 KiB to rank 1 over a fast override link (2^-12 s, 2^22
  // B/s), then 1 KiB to rank 2 over the default link; rank 2 forwards 1 KiB to
  // rank 1 (default link). Rank 1 takes rank 2's message first.
  network_model m = model;
  m.set_link(0, 1, {alpha / 4, beta * 4});
  const auto seen = run_threads(3, [&](thread_transport& t) {
    sim s(t, m);
    const std::vector<std::byte> kib(1024);
    std::vector<std::byte> into;
    std::vector<double> trace;
    switch (s.rank()) {
      case 0:
        s.send(1, 1, kib);
        trace.push_back(s.modelled_seconds());
        s.send(2, 1, kib);
        trace.push_back(s.modelled_seconds());
        break;
      case 1:
        s.recv(2, 1, into);
        trace.push_back(s.modelled_seconds());
        s.recv(0, 1, into);  // arrived long ago: the clock stays
        trace.push_back(s.modelled_seconds());
        break;
      default:
        s.recv(0, 1, into);
        trace.push_back(s.modelled_seconds());
        s.send(1, 1, kib);
        trace.push_back(s.modelled_seconds());
    }
    return trace;
  });
  const double u = 1.0 / 1024;
  CHECK(seen[0] == std::vector<double>{u / 4, u / 4 + u});
  // Rank 2: arrival u/4 + u + alpha; forwarding injects another u.
  CHECK(seen[2] == std::vector<double>{u / 4 + 2 * u, u / 4 + 3 * u});
  // Rank 1: rank 2's message at u/4 + 4u; rank 0's had arrived at u/4 + u/4.
  CHECK(seen[1] == std::vector<double>{u / 4 + 4 * u, u / 4 + 4 * u});
}

TEST_CASE("charge_compute advances the clock and shows in the arrival times") {
  const auto seen = run_threads(2, [&](thread_transport& t) {
    sim s(t, model);
    std::vector<std::byte> into;
    std::vector<double> trace;
    if (s.rank() == 0) {
      s.charge_compute(0.25);
      s.send(1, 0, std::vector<std::byte>(2048));
      trace = {s.modelled_seconds(), s.compute_seconds()};
      trace.push_back(error_of([&] { s.charge_compute(-1); }) == "no error" ? 0 : 1);
      trace.push_back(
          error_of([&] { s.charge_compute(std::numeric_limits<double>::infinity()); }) == "no error"
              ? 0
              : 1);
    } else {
      s.recv(0, 0, into);
      trace = {s.modelled_seconds(), s.compute_seconds()};
    }
    return trace;
  });
  const double u = 1.0 / 1024;
  CHECK(seen[0] == std::vector<double>{0.25 + 2 * u, 0.25, 1, 1});
  CHECK(seen[1] == std::vector<double>{0.25 + 3 * u, 0});
}

TEST_CASE("recv_any advances the clock to the arrival of the message it takes") {
  const auto seen = run_threads(3, [&](thread_transport& t) {
    sim s(t, model);
    std::vector<std::byte> into;
    std::vector<double> trace;
    if (s.rank() == 0) {
      for (int i = 0; i < 2; ++i) {
        const int from = s.recv_any(9, into);
        trace.push_back(from);
        trace.push_back(static_cast<double>(into.size()));
      }
      trace.push_back(s.modelled_seconds());
    } else {
      // Rank r sends r KiB: arrival r * 2^-10 + alpha.
      s.send(0, 9, std::vector<std::byte>(1024 * static_cast<std::size_t>(s.rank())));
    }
    return trace;
  });
  REQUIRE(seen[0].size() == 5);
  CHECK(seen[0][0] + seen[0][2] == 3);  // ranks 1 and 2, in either order
  CHECK(seen[0][1] == 1024 * seen[0][0]);
  CHECK(seen[0][3] == 1024 * seen[0][2]);
  CHECK(seen[0][4] == 3.0 / 1024);  // the later arrival: 2 KiB / beta + alpha
}

TEST_CASE("a message without the trailer is a transport_error naming its sender") {
  auto error_at_rank1 = [](std::vector<std::byte> raw) {
    std::string error = "none";
    try {
      run_threads(2, [&](thread_transport& t) {
        sim s(t, model);
        std::vector<std::byte> into;
        if (s.rank() == 0) {
          t.send(1, 5, raw);  // around the wrapper
        } else {
          try {
            s.recv(0, 5, into);
          } catch (const ecopt::transport_error& e) {
            error = e.what();
            throw;
          }
        }
      });
    } catch (const ecopt::transport_error&) {
    }
    return error;
  };
  const std::string short_one = error_at_rank1(std::vector<std::byte>(5));
  CHECK(contains(short_one,
                 "rank 1: message from rank 0 (tag 5) has 5 bytes, fewer than the "
                 "12-byte simulated_transport trailer"));
  CHECK(contains(error_at_rank1(std::vector<std::byte>(40)),
                 "message from rank 0 (tag 5) does not end in a simulated_transport trailer"));
  // A valid mark with a NaN arrival time.
  std::vector<std::byte> nan_time(20);
  const auto bits = std::bit_cast<std::uint64_t>(std::numeric_limits<double>::quiet_NaN());
  for (int i = 0; i < 8; ++i) nan_time[8 + i] = static_cast<std::byte>(bits >> (8 * i));
  for (int i = 0; i < 4; ++i) nan_time[16 + i] = static_cast<std::byte>(0x45435349u >> (8 * i));
  CHECK(contains(error_at_rank1(nan_time), "carries an invalid modelled arrival time"));
}

TEST_CASE("solver: run_report and history carry the modelled communication time") {
  // World 2, dense exchange (allreduce of d floats: 2 messages of 2d bytes
  // per rank and round), d = 8, latency alpha. Clocks, in units of
  // u = 2^-17 s (8 bytes / beta) and alpha = 128 u:
  //   broadcast of x (8d = 64 bytes): rank 0 at 8u, rank 1 at 8u + alpha
  //   each round: + 2 (alpha + 2d/beta) = 2 (alpha + 2u) on both ranks
  //   (their clocks stay within alpha of each other, so each ring step
  //   waits for the neighbour's message: + alpha + 2u)
  // The evaluations' messages are charged to the clock but not to the report.
  constexpr Eigen::Index d = 8;
  constexpr std::uint64_t steps = 20;
  Eigen::MatrixXd h = Eigen::MatrixXd::Identity(d, d);
  Eigen::VectorXd b = Eigen::VectorXd::LinSpaced(d, -1.0, 1.0);
  const ecopt::solver s{ecopt::no_compression{}, ecopt::no_compensation{}, ecopt::sgd{.lr = 0.1}};
  struct outcome {
    ecopt::run_report report;
    double clock = 0;
    Eigen::VectorXd x;
  };
  const auto simulated = run_threads(2, [&](thread_transport& t) {
    sim net(t, model);
    ecopt::quadratic<double> p(h, b);
    Eigen::VectorXd x = Eigen::VectorXd::Zero(d);
    auto report = s.run(net, p, x, {.steps = steps, .eval_every = 5});
    return outcome{report, net.modelled_seconds(), x};
  });
  const auto plain = run_threads(2, [&](thread_transport& t) {
    ecopt::quadratic<double> p(h, b);
    Eigen::VectorXd x = Eigen::VectorXd::Zero(d);
    auto report = s.run(t, p, x, {.steps = steps, .eval_every = 5});
    return outcome{report, 0, x};
  });
  const double u = 1.0 / (1 << 17);
  const double round = 2 * (alpha + 2 * u);
  for (int r = 0; r < 2; ++r) {
    CAPTURE(r);
    const auto& o = simulated[static_cast<std::size_t>(r)];
    const double start = 8 * u + (r == 1 ? alpha : 0);
    CHECK(o.report.modelled_seconds > 0);
    CHECK(o.report.modelled_seconds == start + steps * round);
    REQUIRE(o.report.history.size() == 1 + steps / 5);
    for (std::size_t k = 0; k < o.report.history.size(); ++k) {
      CAPTURE(k);
      CHECK(o.report.history[k].modelled_seconds == start + 5.0 * static_cast<double>(k) * round);
    }
    // The clock itself also holds the evaluations (and nothing is left over).
    CHECK(o.clock > o.report.modelled_seconds);
    // The wrapper changes no number of the optimization.
    const auto& q = plain[static_cast<std::size_t>(r)];
    CHECK(q.report.modelled_seconds == 0);
    CHECK(o.x == q.x);
    CHECK(o.report.payload_bits == q.report.payload_bits);
    CHECK(o.report.wire_bits == q.report.wire_bits);
    CHECK(o.report.final_loss() == q.report.final_loss());
  }
}

TEST_CASE("send and recv do not allocate once buffers have circulated") {
  // As thread_transport's own test: a burst of the largest message first
  // provisions the inner inboxes, then a ring of mixed sizes is counted.
  const std::vector<std::size_t> sizes{0, 8, 1000, 4096, 1};
  constexpr int n = 3;
  std::latch all_sent(n);
  const auto counts = run_threads(n, [&](thread_transport& t) {
    sim s(t, model);
    const int right = (s.rank() + 1) % n;
    const int left = (s.rank() + n - 1) % n;
    const std::vector<std::byte> source(4096, std::byte{7});
    std::vector<std::byte> into;
    std::size_t received = 0;
    auto round = [&](std::size_t i) {
      s.send(right, 1, std::span(source).first(sizes[i % sizes.size()]));
      s.recv(left, 1, into);
      received += into.size();
    };
    for (int i = 0; i < 8; ++i) s.send(right, 0, source);
    all_sent.arrive_and_wait();
    for (int i = 0; i < 8; ++i) s.recv(left, 0, into);
    for (std::size_t i = 0; i < 2 * sizes.size(); ++i) round(i);

    ecopt::test::allocation_scope scope;
    received = 0;
    for (std::size_t i = 0; i < 20 * sizes.size(); ++i) round(i);
    return std::pair{scope.count(), received};
  });
  for (const auto& [allocations, received] : counts) {
    CHECK(allocations == 0);
    CHECK(received == 20 * (0 + 8 + 1000 + 4096 + 1));
  }
}

}  // namespace simulated_transport_test
