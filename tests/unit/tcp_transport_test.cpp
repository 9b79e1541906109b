// tcp_transport over 127.0.0.1 with ranks as threads of this process:
// point-to-point delivery, every collective at world sizes 1..4, recv_any,
// deadlines, failing and vanishing peers, malformed frames and refused
// handshakes (the last two written byte by byte with plain Asio sockets), and
// allocation-free steady state. Assertions run on the test's thread; rank
// functions only return what they saw.
#include <doctest/doctest.h>

#if ECOPT_TEST_HAVE_TCP

#include <atomic>
#include <boost/asio/connect.hpp>
#include <boost/asio/io_context.hpp>
#include <boost/asio/ip/tcp.hpp>
#include <boost/asio/read.hpp>
#include <boost/asio/write.hpp>
#include <chrono>
#include <cstddef>
#include <cstdint>
#include <cstdlib>
#include <cstring>
#include <functional>
#include <future>
#include <latch>
#include <optional>
#include <span>
#include <stdexcept>
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
#include "ecopt/transports/tcp_transport.hpp"
#include "ecopt/transports/thread_transport.hpp"
#include "support/alloc_counter.hpp"

namespace {

using namespace std::chrono_literals;
using ecopt::collective_workspace;
using ecopt::tcp_options;
using ecopt::tcp_transport;
namespace wire = ecopt::detail::tcp_wire;
namespace asio = boost::asio;
using asio::ip::tcp;

static_assert(ecopt::RecvAnyTransport<ecopt::thread_transport>);
static_assert(ecopt::RecvAnyTransport<tcp_transport>);

bool contains(const std::string& text, const std::string& part) {
  return text.find(part) != std::string::npos;
}

std::vector<std::byte> pattern(std::size_t size, unsigned seed) {
  std::vector<std::byte> v(size);
  for (std::size_t i = 0; i < size; ++i) {
    v[i] = static_cast<std::byte>((i * 131u + seed * 17u + (i >> 8)) & 0xffu);
  }
  return v;
}

/// What each rank of a run_tcp world returned or threw.
template <class R>
struct world_outcome {
  std::vector<std::optional<R>> values;
  std::vector<std::string> errors;  // "" when the rank succeeded

  [[nodiscard]] bool all_ok() const {
    for (const auto& e : errors) {
      if (!e.empty()) return false;
    }
    return true;
  }
  [[nodiscard]] std::string error_text() const {
    std::string s;
    for (std::size_t r = 0; r < errors.size(); ++r) {
      if (!errors[r].empty()) s += "[rank " + std::to_string(r) + "] " + errors[r] + "\n";
    }
    return s;
  }
};

/// Runs fn(tcp_transport&) on n threads, one rank each, connected over
/// 127.0.0.1 through rank 0's port-0 address (shared with a promise).
/// `adjust(rank, options)` may change a rank's options.
template <class Fn>
auto run_tcp(int n, Fn fn, tcp_options base = {},
             const std::function<void(int, tcp_options&)>& adjust = {}) {
  using raw = std::invoke_result_t<Fn&, tcp_transport&>;
  using R = std::conditional_t<std::is_void_v<raw>, bool, raw>;
  world_outcome<R> out;
  out.values.resize(static_cast<std::size_t>(n));
  out.errors.resize(static_cast<std::size_t>(n));
  std::promise<std::uint16_t> port;
  std::shared_future<std::uint16_t> port_known = port.get_future().share();
  std::atomic<bool> port_set{false};
  auto body = [&](int r) {
    try {
      tcp_options o = base;
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
      tcp_transport t(o);
      if constexpr (std::is_void_v<raw>) {
        fn(t);
        out.values[static_cast<std::size_t>(r)] = true;
      } else {
        out.values[static_cast<std::size_t>(r)] = fn(t);
      }
    } catch (const std::exception& e) {
      out.errors[static_cast<std::size_t>(r)] = e.what();
      if (r == 0 && !port_set.exchange(true)) {
        port.set_exception(std::current_exception());
      }
    }
  };
  std::vector<std::thread> threads;
  for (int r = 0; r < n; ++r) threads.emplace_back(body, r);
  for (auto& t : threads) t.join();
  return out;
}

/// Picks free ports for a host list (bound and released at once: another
/// process could take one meanwhile, but nothing on a test machine does).
std::vector<std::string> free_host_list(int n) {
  asio::io_context io;
  std::vector<tcp::acceptor> held;
  std::vector<std::string> hosts;
  for (int i = 0; i < n; ++i) {
    held.emplace_back(io, tcp::endpoint(asio::ip::make_address("127.0.0.1"), 0));
    hosts.push_back("127.0.0.1:" + std::to_string(held.back().local_endpoint().port()));
  }
  return hosts;
}

/// A hand-driven peer speaking the wire protocol byte by byte.
struct raw_peer {
  asio::io_context io;
  tcp::socket socket{io};

  void connect(std::uint16_t port) {
    socket.connect(tcp::endpoint(asio::ip::make_address("127.0.0.1"), port));
  }

  void write(std::span<const std::byte> bytes) {
    asio::write(socket, asio::buffer(bytes.data(), bytes.size()));
  }

  void write_frame(const wire::header_bytes& header, std::span<const std::byte> payload = {}) {
    write(header);
    write(payload);
  }

  /// Reads one frame; returns {header, payload}.
  std::pair<wire::frame_header, std::vector<std::byte>> read_frame() {
    wire::header_bytes h{};
    asio::read(socket, asio::buffer(h));
    const wire::frame_header parsed = wire::parse_header(h, 1 << 20);
    std::vector<std::byte> payload(parsed.length);
    asio::read(socket, asio::buffer(payload));
    wire::check_payload(parsed, payload);
    return {parsed, payload};
  }

  /// Sends a hello as `rank` of `world` and returns rank 0's answer.
  std::pair<wire::frame_header, std::vector<std::byte>> hello(int rank, int world,
                                                              const std::string& token = "") {
    const auto payload = wire::encode_hello({.world_size = static_cast<std::uint32_t>(world),
                                             .rank = static_cast<std::uint32_t>(rank),
                                             .token = wire::token_hash(token),
                                             .listen_port = 9,
                                             .host = "127.0.0.1"});
    write_frame(
        wire::make_header(wire::frame_kind::hello, static_cast<std::uint32_t>(rank), 0, payload),
        payload);
    return read_frame();
  }

  /// Joins a world of two as rank 1 (rank 0 then completes its rendezvous).
  void join_as_rank_1(std::uint16_t port) {
    connect(port);
    const auto [h, payload] = hello(1, 2);
    REQUIRE(h.kind == wire::frame_kind::directory);
  }
};

std::string text_of(const std::vector<std::byte>& bytes) {
  return std::string(reinterpret_cast<const char*>(bytes.data()), bytes.size());
}

/// Rank 0 of a world of two whose rank 1 is a raw_peer: the peer joins, runs
/// `script`, and stays connected until rank 0's recv(1, 7) has ended. Returns
/// rank 0's error ("" if the recv succeeded).
std::string rank0_against(const std::function<void(raw_peer&)>& script,
                          std::uint64_t max_message_bytes = std::uint64_t{1} << 20) {
  std::promise<std::uint16_t> port;
  auto port_known = port.get_future();
  std::string error = "rank 0 never finished";
  std::atomic<bool> done{false};
  std::thread rank0([&] {
    try {
      tcp_transport t({.rank = 0,
                       .world_size = 2,
                       .timeout = 10s,
                       .connect_timeout = 10s,
                       .max_message_bytes = max_message_bytes,
                       .on_listening = [&](std::uint16_t p) { port.set_value(p); }});
      std::vector<std::byte> into;
      t.recv(1, 7, into);
      error.clear();
    } catch (const std::exception& e) {
      error = e.what();
    }
    done = true;
  });
  raw_peer peer;
  peer.join_as_rank_1(port_known.get());
  script(peer);
  rank0.join();
  return error;
}

}  // namespace

TEST_SUITE("tcp_transport") {
  TEST_CASE("tcp_options: validate names the bad field") {
    auto message_of = [](const tcp_options& o) {
      try {
        o.validate();
      } catch (const ecopt::invalid_argument& e) {
        return std::string(e.what());
      }
      return std::string("valid");
    };
    CHECK(message_of({}) == "valid");
    CHECK(contains(message_of({.world_size = 0}), "world_size"));
    CHECK(contains(message_of({.rank = 3, .world_size = 3}), "rank 3"));
    CHECK(contains(message_of({.address = "localhost"}), "address"));
    CHECK(contains(message_of({.address = "::1:80"}), "brackets"));
    CHECK(message_of({.address = "[::1]:80"}) == "valid");
    CHECK(contains(message_of({.address = "127.0.0.1:70000"}), "port"));
    CHECK(contains(message_of({.world_size = 2, .hosts = {"127.0.0.1:5000"}}), "hosts"));
    CHECK(contains(message_of({.world_size = 2, .hosts = {"127.0.0.1:5000", "127.0.0.1:0"}}),
                   "hosts[1]"));
    CHECK(contains(message_of({.timeout = 0ms}), "timeout"));
    CHECK(contains(message_of({.connect_timeout = -1ms}), "connect_timeout"));
    CHECK(contains(message_of({.max_message_bytes = 0}), "max_message_bytes"));
    CHECK(contains(message_of({.listen_host = ""}), "listen_host"));
    CHECK_THROWS_AS(tcp_transport({.rank = -1}), ecopt::invalid_argument);
  }

  TEST_CASE("tcp_options::from_environment reads the ECOPT_* variables") {
    const char* names[] = {
        "ECOPT_RANK",        "ECOPT_WORLD_SIZE",         "ECOPT_ADDR",
        "ECOPT_LISTEN_HOST", "ECOPT_JOB_TOKEN",          "ECOPT_TIMEOUT_MS",
        "ECOPT_PORT_FILE",   "ECOPT_CONNECT_TIMEOUT_MS", "ECOPT_MAX_MESSAGE_BYTES"};
    for (const char* n : names) ::unsetenv(n);

    tcp_options o = tcp_options::from_environment();
    CHECK(o.rank == 0);
    CHECK(o.world_size == 1);
    CHECK(o.address == "127.0.0.1:0");

    ::setenv("ECOPT_RANK", "2", 1);
    ::setenv("ECOPT_WORLD_SIZE", "4", 1);
    ::setenv("ECOPT_ADDR", "10.0.0.1:4242", 1);
    ::setenv("ECOPT_JOB_TOKEN", "job-7", 1);
    ::setenv("ECOPT_TIMEOUT_MS", "1500", 1);
    ::setenv("ECOPT_PORT_FILE", "/tmp/port", 1);
    o = tcp_options::from_environment();
    CHECK(o.rank == 2);
    CHECK(o.world_size == 4);
    CHECK(o.address == "10.0.0.1:4242");
    CHECK(o.hosts.empty());
    CHECK(o.job_token == "job-7");
    CHECK(o.timeout == 1500ms);
    CHECK(o.port_file == "/tmp/port");

    ::setenv("ECOPT_ADDR", "a:1,b:2,c:3,d:4", 1);
    o = tcp_options::from_environment();
    CHECK(o.hosts == std::vector<std::string>{"a:1", "b:2", "c:3", "d:4"});

    auto message = [] {
      try {
        (void)tcp_options::from_environment();
      } catch (const ecopt::invalid_argument& e) {
        return std::string(e.what());
      }
      return std::string("accepted");
    };
    ::setenv("ECOPT_RANK", "two", 1);
    CHECK(contains(message(), "ECOPT_RANK='two'"));
    ::setenv("ECOPT_RANK", "4", 1);
    CHECK(contains(message(), "rank 4"));
    ::setenv("ECOPT_RANK", "1", 1);
    ::setenv("ECOPT_TIMEOUT_MS", "0", 1);
    CHECK(contains(message(), "ECOPT_TIMEOUT_MS"));
    ::unsetenv("ECOPT_TIMEOUT_MS");
    ::unsetenv("ECOPT_WORLD_SIZE");
    CHECK(contains(message(), "ECOPT_RANK is set but ECOPT_WORLD_SIZE is not"));
    for (const char* n : names) ::unsetenv(n);
  }

  TEST_CASE("crc32c: standard check value; hardware and portable paths agree") {
    const std::string check = "123456789";
    CHECK(ecopt::detail::crc32c(std::as_bytes(std::span(check.data(), check.size()))) ==
          0xE3069283u);
    CHECK(ecopt::detail::crc32c({}) == 0u);
    const auto data = pattern(1000, 3);
    for (std::size_t n : {0, 1, 7, 8, 9, 63, 64, 999}) {
      CAPTURE(n);
      const std::uint32_t portable =
          ~ecopt::detail::crc32c_update_portable(0xFFFFFFFFu, data.data(), n);
      CHECK(ecopt::detail::crc32c(std::span(data).first(n)) == portable);
    }
  }

  TEST_CASE("frame headers round-trip and every field is checked") {
    const auto payload = pattern(100, 1);
    const wire::header_bytes good =
        wire::make_header(wire::frame_kind::data, 3, 0xEC0C1234u, payload);
    const wire::frame_header h = wire::parse_header(good, 1000);
    CHECK(h.kind == wire::frame_kind::data);
    CHECK(h.sender == 3);
    CHECK(h.tag == 0xEC0C1234u);
    CHECK(h.length == 100);
    CHECK_NOTHROW(wire::check_payload(h, payload));

    auto error_of = [](const wire::header_bytes& bytes, std::uint64_t limit = 1000) {
      try {
        (void)wire::parse_header(bytes, limit);
      } catch (const ecopt::transport_error& e) {
        return std::string(e.what());
      }
      return std::string("accepted");
    };
    // Changes byte `at` and re-seals the header checksum, so the field check fires.
    auto resealed = [&](std::size_t at, std::byte value) {
      wire::header_bytes b = good;
      b[at] = value;
      wire::put_u32(b.data() + 28, ecopt::detail::crc32c(std::span<const std::byte>(b.data(), 28)));
      return b;
    };
    wire::header_bytes bad_magic = good;
    bad_magic[0] ^= std::byte{0xff};
    CHECK(contains(error_of(bad_magic), "magic"));
    wire::header_bytes flipped = good;
    flipped[13] ^= std::byte{0x01};
    CHECK(contains(error_of(flipped), "header checksum"));
    CHECK(contains(error_of(resealed(4, std::byte{2})), "version 2"));
    CHECK(contains(error_of(resealed(5, std::byte{0})), "kind 0"));
    CHECK(contains(error_of(resealed(5, std::byte{99})), "kind 99"));
    CHECK(contains(error_of(resealed(6, std::byte{1})), "flags"));
    CHECK(contains(error_of(good, 99), "exceeds the maximum of 99 bytes"));

    auto corrupt = payload;
    corrupt[50] ^= std::byte{0x10};
    CHECK_THROWS_WITH_AS(wire::check_payload(h, corrupt), doctest::Contains("payload checksum"),
                         ecopt::transport_error);
  }

  TEST_CASE("point-to-point at 0 B, 1 B, 1 MiB and 64 MiB arrives intact") {
    const std::vector<std::size_t> sizes{0, 1, std::size_t{1} << 20};
    const std::size_t big = std::size_t{64} << 20;
    struct seen {
      int mismatches = 0;
      std::uint64_t bytes_sent = 0;
      std::uint64_t wire_bytes_sent = 0;
    };
    const auto w = run_tcp(2, [&](tcp_transport& t) {
      seen out;
      const int peer = 1 - t.rank();
      // Stale contents and capacity must not leak into what recv returns.
      std::vector<std::byte> into(3000, std::byte{0xee});
      for (std::size_t i = 0; i < sizes.size(); ++i) {
        t.send(peer, static_cast<ecopt::message_tag>(i),
               pattern(sizes[i], static_cast<unsigned>(t.rank() * 10 + i)));
      }
      if (t.rank() == 0) t.send(1, 99, pattern(big, 77));
      for (std::size_t i = 0; i < sizes.size(); ++i) {
        t.recv(peer, static_cast<ecopt::message_tag>(i), into);
        if (into != pattern(sizes[i], static_cast<unsigned>(peer * 10 + i))) ++out.mismatches;
      }
      if (t.rank() == 1) {
        t.recv(0, 99, into);
        if (into != pattern(big, 77)) ++out.mismatches;
      }
      out.bytes_sent = t.bytes_sent();
      out.wire_bytes_sent = t.wire_bytes_sent();
      return out;
    });
    REQUIRE_MESSAGE(w.all_ok(), w.error_text());
    const std::uint64_t small = (std::uint64_t{1} << 20) + 1;
    CHECK(w.values[0]->mismatches == 0);
    CHECK(w.values[1]->mismatches == 0);
    CHECK(w.values[0]->bytes_sent == small + big);
    CHECK(w.values[1]->bytes_sent == small);
    CHECK(w.values[0]->wire_bytes_sent == small + big + 4 * wire::header_size);
    CHECK(w.values[1]->wire_bytes_sent == small + 3 * wire::header_size);
  }

  TEST_CASE("messages of a pair keep their order; pairs do not block each other") {
    constexpr int count = 300;
    const auto w = run_tcp(3, [](tcp_transport& t) {
      std::vector<int> order;
      if (t.rank() == 0) {
        std::vector<std::byte> into;
        for (int from : {2, 1}) {  // the opposite of any natural order
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
    REQUIRE_MESSAGE(w.all_ok(), w.error_text());
    std::vector<int> expected;
    for (int from : {2, 1}) {
      for (int i = 0; i < count; ++i) expected.push_back(from * 1000 + i);
    }
    CHECK(*w.values[0] == expected);
  }

  TEST_CASE("every collective agrees with its serial reference at world sizes 1..4") {
    for (int n = 1; n <= 4; ++n) {
      CAPTURE(n);
      const auto w = run_tcp(n, [](tcp_transport& t) {
        std::vector<std::string> wrong;
        const int r = t.rank();
        const int n = t.size();
        collective_workspace ws;
        for (std::size_t size : {std::size_t{1}, std::size_t{3}, std::size_t{1000}}) {
          std::vector<double> sum(size);
          std::vector<std::int64_t> max(size);
          for (std::size_t i = 0; i < size; ++i) {
            sum[i] = r * 1000.0 + static_cast<double>(i) * 0.5;
            max[i] =
                static_cast<std::int64_t>((i * 7 + static_cast<std::size_t>(r) * 13) % 101) - 50;
          }
          ecopt::allreduce_sum(t, std::span(sum), ws);
          ecopt::allreduce_max(t, std::span(max), ws);
          for (std::size_t i = 0; i < size; ++i) {
            const double want = 1000.0 * n * (n - 1) / 2 + n * static_cast<double>(i) * 0.5;
            std::int64_t want_max = -1000;
            for (int q = 0; q < n; ++q) {
              want_max = std::max<std::int64_t>(
                  want_max,
                  static_cast<std::int64_t>((i * 7 + static_cast<std::size_t>(q) * 13) % 101) - 50);
            }
            if (sum[i] != want) wrong.push_back("allreduce_sum[" + std::to_string(i) + "]");
            if (max[i] != want_max) wrong.push_back("allreduce_max[" + std::to_string(i) + "]");
          }
        }
        // allgather: 5 floats per rank.
        std::vector<float> mine(5), all(5 * static_cast<std::size_t>(n));
        for (std::size_t k = 0; k < 5; ++k)
          mine[k] = static_cast<float>(r * 10 + static_cast<int>(k));
        ecopt::allgather(t, std::span<const float>(mine), std::span(all), ws);
        for (int q = 0; q < n; ++q) {
          for (std::size_t k = 0; k < 5; ++k) {
            if (all[static_cast<std::size_t>(q) * 5 + k] !=
                static_cast<float>(q * 10 + static_cast<int>(k))) {
              wrong.push_back("allgather block " + std::to_string(q));
            }
          }
        }
        // allgather_bytes: blocks of different sizes, rank 0's empty.
        std::vector<std::vector<std::byte>> blocks;
        ecopt::allgather_bytes(
            t, pattern(static_cast<std::size_t>(r) * 300, static_cast<unsigned>(r)), blocks);
        for (int q = 0; q < n; ++q) {
          if (blocks[static_cast<std::size_t>(q)] !=
              pattern(static_cast<std::size_t>(q) * 300, static_cast<unsigned>(q))) {
            wrong.push_back("allgather_bytes block " + std::to_string(q));
          }
        }
        // broadcast from every root.
        for (int root = 0; root < n; ++root) {
          std::vector<std::int32_t> data(17, r == root ? 0 : -1);
          if (r == root) {
            for (std::size_t i = 0; i < data.size(); ++i)
              data[i] = root * 100 + static_cast<int>(i);
          }
          ecopt::broadcast(t, std::span(data), root, ws);
          for (std::size_t i = 0; i < data.size(); ++i) {
            if (data[i] != root * 100 + static_cast<int>(i)) {
              wrong.push_back("broadcast from " + std::to_string(root));
              break;
            }
          }
        }
        for (int k = 0; k < 3; ++k) ecopt::barrier(t, ws);
        return wrong;
      });
      REQUIRE_MESSAGE(w.all_ok(), w.error_text());
      for (int r = 0; r < n; ++r) {
        CAPTURE(r);
        CHECK(*w.values[static_cast<std::size_t>(r)] == std::vector<std::string>{});
      }
    }
  }

  TEST_CASE("a world of one needs no sockets; peers must be other ranks") {
    tcp_transport t({});
    CHECK(t.rank() == 0);
    CHECK(t.size() == 1);
    collective_workspace ws;
    std::vector<double> v{1.5, 2.5};
    ecopt::allreduce_sum(t, std::span(v), ws);
    ecopt::barrier(t, ws);
    CHECK(v == std::vector<double>{1.5, 2.5});
    std::vector<std::byte> into;
    CHECK_THROWS_AS(t.send(0, 1, {}), ecopt::invalid_argument);
    CHECK_THROWS_AS(t.recv(1, 1, into), ecopt::invalid_argument);
    CHECK_THROWS_AS(t.recv_any(1, into), ecopt::invalid_argument);

    const auto w = run_tcp(2, [](tcp_transport& tr) {
      int caught = 0;
      std::vector<std::byte> buffer;
      for (int peer : {-1, 2, tr.rank()}) {
        try {
          tr.send(peer, 1, {});
        } catch (const ecopt::invalid_argument&) {
          ++caught;
        }
        try {
          tr.recv(peer, 1, buffer);
        } catch (const ecopt::invalid_argument&) {
          ++caught;
        }
      }
      return caught;
    });
    REQUIRE_MESSAGE(w.all_ok(), w.error_text());
    CHECK(*w.values[0] == 6);
    CHECK(*w.values[1] == 6);
  }

  TEST_CASE("recv_any takes the earliest matching head from any rank") {
    const auto w = run_tcp(4, [](tcp_transport& t) {
      std::vector<int> seen;
      std::vector<std::byte> into;
      if (t.rank() == 0) {
        // Rank 1's head has tag 8, so its tag-9 message waits behind it
        // whenever it arrives.
        for (int i = 0; i < 2; ++i) {
          const int from = t.recv_any(9, into);
          seen.push_back(from);
          seen.push_back(into.size() == 1 ? static_cast<int>(into[0]) : -1);
        }
        t.recv(1, 8, into);
        seen.push_back(t.recv_any(9, into));
        // Everyone else closes next: nothing more can come.
        try {
          t.recv_any(9, into);
        } catch (const ecopt::transport_error& e) {
          seen.push_back(contains(e.what(), "every other rank has closed its transport") ? -1 : -2);
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
    REQUIRE(s.size() == 6);
    // Ranks 2 and 3 in either order, each with its own payload; then rank 1.
    CHECK(((s[0] == 2 && s[2] == 3) || (s[0] == 3 && s[2] == 2)));
    CHECK(s[1] == s[0]);
    CHECK(s[3] == s[2]);
    CHECK(s[4] == 1);
    CHECK(s[5] == -1);
  }

  TEST_CASE("a message with an unexpected tag is a transport_error naming both tags") {
    const auto w = run_tcp(2, [](tcp_transport& t) {
      std::vector<std::byte> into;
      if (t.rank() == 0) {
        t.send(1, 5, {});
      } else {
        t.recv(0, 3, into);
      }
    });
    CHECK(contains(w.errors[1], "rank 1: protocol mismatch: expected tag 3 from rank 0"));
    CHECK(contains(w.errors[1], "tag 5"));
  }

  TEST_CASE("a stalled peer makes recv fail at the deadline, naming the peer") {
    std::latch rank0_failed(1);
    const auto w = run_tcp(2,
                           [&](tcp_transport& t) {
                             std::vector<std::byte> into;
                             if (t.rank() == 0) {
                               try {
                                 t.recv(1, 3, into);
                               } catch (...) {
                                 rank0_failed.count_down();
                                 throw;
                               }
                             } else {
                               rank0_failed.wait();  // alive, connected, silent
                             }
                           },
                           {.timeout = 300ms});
    CHECK(contains(w.errors[0],
                   "rank 0: timed out after 300 ms waiting for a message from rank 1 (tag 3)"));
    CHECK(w.errors[1].empty());
  }

  TEST_CASE("a failing rank fails its peers' recvs at once, naming it") {
    const auto start = std::chrono::steady_clock::now();
    const auto w = run_tcp(3,
                           [](tcp_transport& t) {
                             std::vector<std::byte> into;
                             if (t.rank() == 1) throw std::runtime_error("worker exploded");
                             t.recv(1, 0, into);  // never sent: rank 1 fails instead
                           },
                           {.timeout = 30s});
    CHECK(std::chrono::steady_clock::now() - start < 15s);  // not the 30 s deadline
    CHECK(w.errors[1] == "worker exploded");
    for (int r : {0, 2}) {
      CAPTURE(w.errors[static_cast<std::size_t>(r)]);
      // Rank 1 directly, or the other rank, whose abort names rank 1 as the cause.
      CHECK(contains(w.errors[static_cast<std::size_t>(r)],
                     "rank " + std::to_string(r) + ": peer rank "));
      CHECK(contains(w.errors[static_cast<std::size_t>(r)],
                     "peer rank 1 failed: its transport was destroyed"));
      CHECK(contains(w.errors[static_cast<std::size_t>(r)],
                     "(while waiting for a message from rank 1 (tag 0))"));
    }
  }

  TEST_CASE("a peer that closes mid-round makes every other rank fail fast") {
    const auto start = std::chrono::steady_clock::now();
    const auto w = run_tcp(4,
                           [](tcp_transport& t) {
                             collective_workspace ws;
                             std::vector<double> v(1000, 1.0);
                             for (int round = 0; round < 1000; ++round) {
                               if (t.rank() == 2 && round == 5)
                                 return round;  // closes its transport
                               ecopt::allreduce_sum(t, std::span(v), ws);
                             }
                             return 1000;
                           },
                           {.timeout = 30s});
    CHECK(std::chrono::steady_clock::now() - start < 15s);
    CHECK(w.errors[2].empty());
    for (int r : {0, 1, 3}) {
      CAPTURE(w.errors[static_cast<std::size_t>(r)]);
      // Each names the rank it lost: rank 2 (closed), or a rank that failed because of it.
      CHECK(contains(w.errors[static_cast<std::size_t>(r)], "rank " + std::to_string(r) + ": "));
      CHECK((contains(w.errors[static_cast<std::size_t>(r)], "rank 2 has closed its transport") ||
             contains(w.errors[static_cast<std::size_t>(r)], "peer rank")));
    }
  }

  TEST_CASE("a peer that vanishes without a goodbye is reported at once") {
    const std::string error = rank0_against([](raw_peer& peer) {
      std::this_thread::sleep_for(50ms);  // let rank 0 wait first (either order must work)
      peer.socket.close();
    });
    CHECK(contains(error, "rank 0: rank 1 closed the connection without a goodbye"));
    CHECK(contains(error, "(while waiting for a message from rank 1 (tag 7))"));
  }

  TEST_CASE("malformed frames are refused with a transport_error naming the sender") {
    const auto payload = pattern(64, 5);
    auto valid = [&] { return wire::make_header(wire::frame_kind::data, 1, 7, payload); };
    struct bad_case {
      const char* name;
      std::function<void(raw_peer&)> script;
      const char* expected;
    };
    const std::vector<bad_case> cases{
        {"bad magic",
         [&](raw_peer& p) {
           auto h = valid();
           h[1] ^= std::byte{0x55};
           p.write_frame(h, payload);
         },
         "bad frame magic"},
        {"bad header checksum",
         [&](raw_peer& p) {
           auto h = valid();
           h[12] ^= std::byte{0x01};  // the tag, without resealing
           p.write_frame(h, payload);
         },
         "frame header checksum mismatch"},
        {"bad payload checksum",
         [&](raw_peer& p) {
           auto corrupt = payload;
           corrupt[10] ^= std::byte{0x80};
           p.write_frame(valid(), corrupt);
         },
         "data frame payload checksum mismatch (64 bytes"},
        {"oversized length",
         [&](raw_peer& p) {
           // A sealed header announcing 1 TiB: refused from the header alone.
           wire::header_bytes h;
           wire::encode_header({.kind = wire::frame_kind::data,
                                .sender = 1,
                                .tag = 7,
                                .length = std::uint64_t{1} << 40,
                                .payload_crc = 0},
                               h);
           p.write_frame(h);
         },
         "data frame length 1099511627776 bytes exceeds the maximum of 1048576 bytes"},
        {"wrong sender",
         [&](raw_peer& p) {
           p.write_frame(wire::make_header(wire::frame_kind::data, 0, 7, payload), payload);
         },
         "names sender rank 0"},
        {"handshake frame after the handshake",
         [&](raw_peer& p) {
           p.write_frame(wire::make_header(wire::frame_kind::hello, 1, 0, payload), payload);
         },
         "unexpected hello frame after the handshake"},
    };
    for (const bad_case& c : cases) {
      CAPTURE(c.name);
      const std::string error = rank0_against(c.script);
      CAPTURE(error);
      CHECK(contains(error, "rank 0: rank 1 broke the frame protocol: "));
      CHECK(contains(error, c.expected));
    }
    // The limit is the option's: a 2 MiB message passes a 4 MiB limit.
    const auto big = pattern(std::size_t{2} << 20, 9);
    CHECK(rank0_against(
              [&](raw_peer& p) {
                p.write_frame(wire::make_header(wire::frame_kind::data, 1, 7, big), big);
                p.write_frame(wire::make_header(wire::frame_kind::goodbye, 1, 0, {}));
              },
              std::uint64_t{4} << 20)
              .empty());
  }

  TEST_CASE("handshakes with a wrong world size, job token, rank or frame are refused") {
    std::promise<std::uint16_t> port;
    auto port_known = port.get_future();
    std::string rank0_error = "unset";
    std::thread rank0([&] {
      try {
        tcp_transport t({.rank = 0,
                         .world_size = 2,
                         .job_token = "alpha",
                         .timeout = 10s,
                         .connect_timeout = 20s,
                         .on_listening = [&](std::uint16_t p) { port.set_value(p); }});
        std::vector<std::byte> into;
        t.recv(1, 1, into);
        rank0_error.clear();
      } catch (const std::exception& e) {
        rank0_error = e.what();
      }
    });
    const std::uint16_t p = port_known.get();
    const std::string address = "127.0.0.1:" + std::to_string(p);
    auto join_error = [&](int world, const std::string& token) {
      try {
        tcp_transport t({.rank = 1,
                         .world_size = world,
                         .address = address,
                         .job_token = token,
                         .connect_timeout = 10s});
      } catch (const ecopt::transport_error& e) {
        return std::string(e.what());
      }
      return std::string("joined");
    };
    const std::string wrong_world = join_error(3, "alpha");
    CHECK(contains(wrong_world, "rank 1: tcp rendezvous failed: rank 0 (" + address +
                                    ") refused the handshake: world size 3 does not match rank 0's "
                                    "world size 2"));
    CHECK(contains(join_error(2, "beta"), "refused the handshake: job token does not match"));

    // Raw clients: a rank out of range, garbage, and one that never speaks
    // (it must not hold up the others).
    raw_peer out_of_range;
    out_of_range.connect(p);
    {
      const auto payload = wire::encode_hello({.world_size = 2,
                                               .rank = 5,
                                               .token = wire::token_hash("alpha"),
                                               .listen_port = 9,
                                               .host = ""});
      out_of_range.write_frame(wire::make_header(wire::frame_kind::hello, 5, 0, payload), payload);
      const auto [h, reason] = out_of_range.read_frame();
      CHECK(h.kind == wire::frame_kind::reject);
      CHECK(contains(text_of(reason), "rank 5 is out of range for world size 2"));
    }
    raw_peer garbage;
    garbage.connect(p);
    {
      const std::vector<std::byte> junk(wire::header_size, std::byte{'x'});
      garbage.write(junk);
      const auto [h, reason] = garbage.read_frame();
      CHECK(h.kind == wire::frame_kind::reject);
      CHECK(contains(text_of(reason), "bad frame magic"));
    }
    raw_peer silent;
    silent.connect(p);

    // The right rank 1 still gets in.
    std::string good = "unset";
    try {
      tcp_transport t({.rank = 1, .world_size = 2, .address = address, .job_token = "alpha"});
      t.send(0, 1, {});
      good.clear();
    } catch (const std::exception& e) {
      good = e.what();
    }
    rank0.join();
    CHECK(good.empty());
    CHECK(rank0_error.empty());
  }

  TEST_CASE("a duplicate rank is refused; the world completes without it") {
    std::promise<std::uint16_t> port;
    std::shared_future<std::uint16_t> port_known = port.get_future().share();
    std::vector<std::string> errors(4, "unset");  // rank 0, rank 1 (A), rank 1 (B), rank 2
    std::atomic<int> refused{0};
    std::promise<void> one_refused;
    auto run_rank = [&](std::size_t slot, int rank) {
      try {
        tcp_options o{.rank = rank, .world_size = 3, .connect_timeout = 20s};
        if (rank == 0) {
          o.on_listening = [&](std::uint16_t p) { port.set_value(p); };
        } else {
          o.address = "127.0.0.1:" + std::to_string(port_known.get());
        }
        tcp_transport t(o);
        collective_workspace ws;
        ecopt::barrier(t, ws);
        errors[slot].clear();
      } catch (const std::exception& e) {
        errors[slot] = e.what();
        if (refused++ == 0) one_refused.set_value();
      }
    };
    std::vector<std::thread> threads;
    threads.emplace_back(run_rank, 0, 0);
    threads.emplace_back(run_rank, 1, 1);
    threads.emplace_back(run_rank, 2, 1);
    // Rank 0 waits for rank 2, so one of the two rank 1s must be refused first.
    REQUIRE(one_refused.get_future().wait_for(20s) == std::future_status::ready);
    threads.emplace_back(run_rank, 3, 2);
    for (auto& t : threads) t.join();
    CHECK(errors[0].empty());
    CHECK(errors[3].empty());
    CHECK(refused.load() == 1);
    const std::string& loser = errors[1].empty() ? errors[2] : errors[1];
    CHECK(contains(loser, "refused the handshake: duplicate rank 1: rank 1 is already connected"));
  }

  TEST_CASE("a rendezvous that cannot complete times out listing what it refused") {
    std::promise<std::uint16_t> port;
    auto port_known = port.get_future();
    std::string rank0_error;
    std::thread rank0([&] {
      try {
        tcp_transport t({.rank = 0,
                         .world_size = 2,
                         .job_token = "mine",
                         .connect_timeout = 700ms,
                         .on_listening = [&](std::uint16_t p) { port.set_value(p); }});
      } catch (const ecopt::transport_error& e) {
        rank0_error = e.what();
      }
    });
    const std::string address = "127.0.0.1:" + std::to_string(port_known.get());
    CHECK_THROWS_AS(
        tcp_transport({.rank = 1, .world_size = 2, .address = address, .job_token = "theirs"}),
        ecopt::transport_error);
    rank0.join();
    CAPTURE(rank0_error);
    CHECK(contains(
        rank0_error,
        "rank 0: tcp rendezvous failed: not complete after 700 ms: no hello from rank(s) 1"));
    CHECK(contains(rank0_error, "[refused 1 connection(s): connection from 127.0.0.1:"));
    CHECK(contains(rank0_error, "job token does not match"));

    // Nobody listening at all: the connecting rank gives up at its deadline.
    const std::string unused = free_host_list(1)[0];
    try {
      tcp_transport t({.rank = 1, .world_size = 2, .address = unused, .connect_timeout = 300ms});
      FAIL("expected a transport_error");
    } catch (const ecopt::transport_error& e) {
      CHECK(contains(e.what(), "not connected to rank 0 at " + unused));
      CHECK(contains(e.what(), "Connection refused"));
    }
  }

  TEST_CASE("an explicit host list connects the mesh without a directory") {
    const std::vector<std::string> hosts = free_host_list(3);
    const auto w = run_tcp(3,
                           [](tcp_transport& t) {
                             collective_workspace ws;
                             std::vector<std::int64_t> v{t.rank() + 1, 10};
                             ecopt::allreduce_sum(t, std::span(v), ws);
                             return v;
                           },
                           {.hosts = hosts});
    REQUIRE_MESSAGE(w.all_ok(), w.error_text());
    for (const auto& v : w.values) CHECK(*v == std::vector<std::int64_t>{6, 30});
  }

  TEST_CASE("collectives do not allocate on the caller's thread once buffers have circulated") {
    std::latch all_sent(3);
    const auto w = run_tcp(3, [&](tcp_transport& t) {
      collective_workspace ws;
      std::vector<double> v(4096, 1.0);
      const int right = (t.rank() + 1) % t.size();
      const int left = (t.rank() + t.size() - 1) % t.size();
      // A burst of the largest message provisions more pooled buffers than the
      // ring below ever has in flight, whatever the schedule.
      const auto burst = pattern(4096 * sizeof(double), 1);
      std::vector<std::byte> into;
      for (int i = 0; i < 8; ++i) t.send(right, 0, burst);
      all_sent.arrive_and_wait();
      for (int i = 0; i < 8; ++i) t.recv(left, 0, into);
      auto round = [&] {
        std::fill(v.begin(), v.end(), 1.0);
        ecopt::allreduce_sum(t, std::span(v), ws);
        ecopt::broadcast(t, std::span(v), 1, ws);
        ecopt::barrier(t, ws);
      };
      for (int i = 0; i < 10; ++i) round();
      ecopt::test::allocation_scope scope;
      for (int i = 0; i < 50; ++i) round();
      return std::pair{scope.count(), v[17]};
    });
    REQUIRE_MESSAGE(w.all_ok(), w.error_text());
    for (const auto& v : w.values) {
      CHECK(v->first == 0);
      CHECK(v->second == 3.0);
    }
  }

}  // TEST_SUITE

#endif  // ECOPT_TEST_HAVE_TCP
