// tcp_transport's own behaviour, over 127.0.0.1 with ranks as threads of this
// process: options and environment, checksums and frame headers, wire byte
// accounting, a peer that vanishes without a goodbye, malformed frames and
// refused handshakes (written byte by byte with plain Asio sockets),
// rendezvous, host lists and allocation-free steady state. Delivery, order,
// every collective, recv_any, deadlines and failing peers are in the transport
// contract suite (transport_contracts_test.cpp), which runs tcp_transport
// too. Assertions run on the test's thread; rank functions only return what
// they saw.
#include <doctest/doctest.h>

#if ECOPT_TEST_HAVE_TCP

#include <sys/resource.h>
#include <sys/wait.h>
#include <unistd.h>

#include <algorithm>
#include <array>
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
#include <filesystem>
#include <functional>
#include <future>
#include <latch>
#include <memory>
#include <span>
#include <stdexcept>
#include <string>
#include <thread>
#include <vector>

#include "ecopt/collectives/allreduce.hpp"
#include "ecopt/collectives/barrier.hpp"
#include "ecopt/collectives/broadcast.hpp"
#include "ecopt/collectives/collective_workspace.hpp"
#include "ecopt/error.hpp"
#include "ecopt/transports/detail/tcp_auth.hpp"
#include "ecopt/transports/tcp_transport.hpp"
#include "ecopt/transports/thread_transport.hpp"
#include "support/alloc_counter.hpp"
#include "support/transport_worlds.hpp"

// Everything of this file lives in its own namespace, so that test files can share a
// translation unit (the unity build in tests/CMakeLists.txt).
namespace tcp_transport_test {

namespace {

using namespace std::chrono_literals;
using ecopt::collective_workspace;
using ecopt::tcp_options;
using ecopt::tcp_transport;
using ecopt::test::run_tcp;
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

  void send(wire::frame_kind kind, int rank, std::span<const std::byte> payload,
            std::vector<std::byte>* record) {
    const auto header = wire::make_header(kind, static_cast<std::uint32_t>(rank), 0, payload);
    write_frame(header, payload);
    if (record != nullptr) {
      record->insert(record->end(), header.begin(), header.end());
      record->insert(record->end(), payload.begin(), payload.end());
    }
  }

  /// Runs the connecting side of the handshake (tcp_auth.hpp) as `rank` of
  /// `world` with `token` against rank 0, and returns its last answer: the
  /// verdict on the proof (with `await_verdict`), else the challenge or an
  /// early reject. The frames written are appended to `record` if given.
  std::pair<wire::frame_header, std::vector<std::byte>> handshake(
      int rank, int world, const std::string& token = "", std::vector<std::byte>* record = nullptr,
      bool await_verdict = true) {
    namespace auth = ecopt::detail::tcp_auth;
    auth::transcript t{.kind = wire::frame_kind::hello,
                       .client_nonce = auth::fresh_nonce(),
                       .server_nonce = {},
                       .client_rank = static_cast<std::uint32_t>(rank),
                       .server_rank = 0};
    send(wire::frame_kind::hello, rank,
         wire::encode_hello({.rank = static_cast<std::uint32_t>(rank), .nonce = t.client_nonce}),
         record);
    auto answer = read_frame();
    if (answer.first.kind != wire::frame_kind::challenge) return answer;
    t.server_nonce = wire::parse_challenge(answer.second).nonce;
    wire::proof_payload proof{.proof = {},
                              .world_size = static_cast<std::uint32_t>(world),
                              .listen_port = 9,
                              .host = "127.0.0.1"};
    proof.proof = auth::connecting_proof(token, t, wire::encode_details(proof));
    send(wire::frame_kind::proof, rank, wire::encode_proof(proof), record);
    return await_verdict ? read_frame() : answer;
  }

  /// Joins a world of two as rank 1 (rank 0 then completes its rendezvous).
  void join_as_rank_1(std::uint16_t port) {
    connect(port);
    const auto [h, payload] = handshake(1, 2);
    REQUIRE(h.kind == wire::frame_kind::directory);
  }
};

std::string text_of(const std::vector<std::byte>& bytes) {
  return std::string(reinterpret_cast<const char*>(bytes.data()), bytes.size());
}

/// Rank 0 constructed with `o` on a thread of its own, for peers driven by
/// the test; `then` runs on it once the world is formed. error: "" or what
/// it threw. Joined by join() or on destruction.
struct rank0_thread {
  std::promise<std::uint16_t> listening;
  std::shared_future<std::uint16_t> port = listening.get_future().share();
  std::string error = "rank 0 never finished";
  std::thread thread;

  explicit rank0_thread(tcp_options o, std::function<void(tcp_transport&)> then = {}) {
    o.on_listening = [this](std::uint16_t p) { listening.set_value(p); };
    thread = std::thread([this, o, then] {
      try {
        tcp_transport t(o);
        if (then) then(t);
        error.clear();
      } catch (const std::exception& e) {
        error = e.what();
      }
    });
  }
  rank0_thread(const rank0_thread&) = delete;
  rank0_thread& operator=(const rank0_thread&) = delete;
  ~rank0_thread() { join(); }
  void join() {
    if (thread.joinable()) thread.join();
  }
};

/// Joins rank 0 at `port` as rank 1 of 2 (a real tcp_transport); "" or what
/// it threw.
std::string rank1_error(std::uint16_t port, const std::string& token = "") {
  try {
    tcp_transport t({.rank = 1,
                     .world_size = 2,
                     .address = "127.0.0.1:" + std::to_string(port),
                     .job_token = token,
                     .connect_timeout = 5s});
  } catch (const std::exception& e) {
    return e.what();
  }
  return "";
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

  /// What from_environment refuses the current environment with ("accepted" if nothing).
  std::string environment_refusal() {
    try {
      (void)tcp_options::from_environment();
    } catch (const ecopt::invalid_argument& e) {
      return std::string(e.what());
    }
    return std::string("accepted");
  }

  TEST_CASE("tcp_options::from_environment reads the ECOPT_* variables") {
    const char* names[] = {"ECOPT_RANK",
                           "ECOPT_WORLD_SIZE",
                           "ECOPT_ADDR",
                           "ECOPT_LISTEN_HOST",
                           "ECOPT_JOB_TOKEN",
                           "ECOPT_TIMEOUT_MS",
                           "ECOPT_PORT_FILE",
                           "ECOPT_CONNECT_TIMEOUT_MS",
                           "ECOPT_MAX_MESSAGE_BYTES",
                           "ECOPT_PAYLOAD_CHECKSUM"};
    for (const char* n : names) ::unsetenv(n);

    tcp_options o = tcp_options::from_environment();
    CHECK(o.rank == 0);
    CHECK(o.world_size == 1);
    CHECK(o.address == "127.0.0.1:0");
    CHECK(o.payload_checksum);

    ::setenv("ECOPT_RANK", "2", 1);
    ::setenv("ECOPT_WORLD_SIZE", "4", 1);
    ::setenv("ECOPT_ADDR", "10.0.0.1:4242", 1);
    ::setenv("ECOPT_JOB_TOKEN", "job-7", 1);
    ::setenv("ECOPT_TIMEOUT_MS", "1500", 1);
    ::setenv("ECOPT_PORT_FILE", "/tmp/port", 1);
    ::setenv("ECOPT_PAYLOAD_CHECKSUM", "0", 1);
    o = tcp_options::from_environment();
    CHECK_FALSE(o.payload_checksum);
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

    ::setenv("ECOPT_RANK", "two", 1);
    CHECK(contains(environment_refusal(), "ECOPT_RANK='two'"));
    ::setenv("ECOPT_RANK", "4", 1);
    CHECK(contains(environment_refusal(), "rank 4"));
    ::setenv("ECOPT_RANK", "1", 1);
    ::setenv("ECOPT_PAYLOAD_CHECKSUM", "yes", 1);
    CHECK(contains(environment_refusal(), "ECOPT_PAYLOAD_CHECKSUM='yes'"));
    ::unsetenv("ECOPT_PAYLOAD_CHECKSUM");
    ::setenv("ECOPT_TIMEOUT_MS", "0", 1);
    CHECK(contains(environment_refusal(), "ECOPT_TIMEOUT_MS"));
    ::unsetenv("ECOPT_TIMEOUT_MS");
    ::unsetenv("ECOPT_WORLD_SIZE");
    CHECK(contains(environment_refusal(), "ECOPT_RANK is set but ECOPT_WORLD_SIZE is not"));
    for (const char* n : names) ::unsetenv(n);
  }

  TEST_CASE("tcp_options::from_environment understands torchrun, Slurm, Open MPI and PMI") {
    const char* names[] = {"ECOPT_RANK",
                           "ECOPT_WORLD_SIZE",
                           "ECOPT_ADDR",
                           "ECOPT_PORT",
                           "RANK",
                           "WORLD_SIZE",
                           "MASTER_ADDR",
                           "MASTER_PORT",
                           "SLURM_PROCID",
                           "SLURM_NTASKS",
                           "SLURM_JOB_NODELIST",
                           "SLURM_NODELIST",
                           "OMPI_COMM_WORLD_RANK",
                           "OMPI_COMM_WORLD_SIZE",
                           "PMI_RANK",
                           "PMI_SIZE"};
    auto clear = [&] {
      for (const char* n : names) ::unsetenv(n);
    };
    clear();

    // torchrun
    ::setenv("RANK", "3", 1);
    ::setenv("WORLD_SIZE", "4", 1);
    ::setenv("MASTER_ADDR", "10.1.2.3", 1);
    ::setenv("MASTER_PORT", "29400", 1);
    tcp_options o = tcp_options::from_environment();
    CHECK(o.rank == 3);
    CHECK(o.world_size == 4);
    CHECK(o.address == "10.1.2.3:29400");
    ::setenv("ECOPT_ADDR", "10.9.9.9:7", 1);  // ECOPT_ADDR wins
    CHECK(tcp_options::from_environment().address == "10.9.9.9:7");
    ::unsetenv("ECOPT_ADDR");
    ::unsetenv("MASTER_PORT");
    CHECK(contains(environment_refusal(), "MASTER_ADDR is set but MASTER_PORT is not (torchrun)"));
    ::unsetenv("MASTER_ADDR");
    CHECK(contains(environment_refusal(), "started by torchrun as rank 3 of 4"));
    CHECK(contains(environment_refusal(), "ECOPT_ADDR"));
    ::setenv("ECOPT_RANK", "1", 1);  // ECOPT_* wins over torchrun
    ::setenv("ECOPT_WORLD_SIZE", "2", 1);
    CHECK(tcp_options::from_environment().rank == 1);
    clear();

    // Slurm: rank 0 on the first node of the list
    ::setenv("SLURM_PROCID", "5", 1);
    ::setenv("SLURM_NTASKS", "8", 1);
    ::setenv("SLURM_JOB_NODELIST", "node[07-09,12],gpu1", 1);
    o = tcp_options::from_environment();
    CHECK(o.rank == 5);
    CHECK(o.world_size == 8);
    CHECK(o.address == "node07:29500");
    ::setenv("ECOPT_PORT", "1234", 1);
    CHECK(tcp_options::from_environment().address == "node07:1234");
    ::setenv("SLURM_JOB_NODELIST", "login2", 1);
    CHECK(tcp_options::from_environment().address == "login2:1234");
    ::unsetenv("SLURM_NTASKS");
    CHECK(contains(environment_refusal(), "SLURM_PROCID is set but SLURM_NTASKS is not (Slurm)"));
    clear();

    // Open MPI and PMI name no address: several ranks need ECOPT_ADDR
    ::setenv("OMPI_COMM_WORLD_RANK", "0", 1);
    ::setenv("OMPI_COMM_WORLD_SIZE", "4", 1);
    CHECK(contains(environment_refusal(),
                   "started by Open MPI as rank 0 of 4, which names no address"));
    ::setenv("ECOPT_ADDR", "head:5000", 1);
    o = tcp_options::from_environment();
    CHECK(o.world_size == 4);
    CHECK(o.address == "head:5000");
    clear();
    ::setenv("PMI_RANK", "0", 1);
    ::setenv("PMI_SIZE", "1", 1);  // one rank needs no address
    CHECK(tcp_options::from_environment().world_size == 1);
    ::setenv("PMI_SIZE", "x", 1);
    CHECK(contains(environment_refusal(), "PMI_SIZE='x'"));
    clear();

    CHECK(ecopt::detail::first_slurm_host("a[001-003]") == "a001");
    CHECK(ecopt::detail::first_slurm_host("rack1-n[5,7]-ib") == "rack1-n5-ib");
    CHECK_THROWS_AS((void)ecopt::detail::first_slurm_host("bad[1-2"), ecopt::invalid_argument);
  }

  TEST_CASE("take_pooled prefers a buffer that needs no zero-fill, then the tightest capacity") {
    using pool_type = std::vector<std::vector<std::byte>>;
    auto buffer = [](std::size_t size, std::size_t capacity) {
      std::vector<std::byte> b;
      b.reserve(capacity);
      b.resize(size);
      return b;
    };
    pool_type pool;
    pool.push_back(buffer(100, 2000));   // fits by capacity, but 1400 bytes would be zeroed
    pool.push_back(buffer(3000, 3000));  // already long enough
    pool.push_back(buffer(8000, 8000));  // long enough, looser
    auto taken = ecopt::detail::take_pooled(pool, 1500);
    CHECK(taken.size() == 3000);
    REQUIRE(pool.size() == 2);
    // A long-enough buffer with a loose capacity still beats the short one.
    taken = ecopt::detail::take_pooled(pool, 1500);
    CHECK(taken.size() == 8000);
    // Only the short one is left: it fits by capacity and is taken.
    taken = ecopt::detail::take_pooled(pool, 1500);
    CHECK(taken.capacity() >= 2000);
    CHECK(taken.size() == 100);
    CHECK(pool.empty());
    CHECK(ecopt::detail::take_pooled(pool, 10).capacity() == 0);
    // Nothing large enough: the largest is taken, to grow.
    pool.push_back(buffer(10, 10));
    pool.push_back(buffer(50, 50));
    pool.push_back(buffer(20, 20));
    CHECK(ecopt::detail::take_pooled(pool, 100).size() == 50);
  }

  TEST_CASE("crc32c: standard check value; hardware and portable paths agree") {
    const std::string check = "123456789";
    CHECK(ecopt::detail::crc32c(std::as_bytes(std::span(check.data(), check.size()))) ==
          0xE3069283u);
    CHECK(ecopt::detail::crc32c({}) == 0u);
    // Long inputs take the hardware path's three-lane blocks (3 x 8 KiB) and a tail.
    const auto data = pattern(100'000, 3);
    // From 1 KiB on, CPUs with VPCLMULQDQ fold 256-byte blocks: lengths around
    // the block and threshold edges, each with a tail.
    for (std::size_t n : {0,    1,    7,    8,    9,    63,     64,     999,    1023,   1024,
                          1025, 1279, 1280, 1281, 4100, 24'575, 24'576, 24'583, 49'152, 100'000}) {
      CAPTURE(n);
      const std::uint32_t portable =
          ~ecopt::detail::crc32c_update_portable(0xFFFFFFFFu, data.data(), n);
      CHECK(ecopt::detail::crc32c(std::span(data).first(n)) == portable);
    }
    // Piece by piece (as tcp_transport checks a body while it arrives), cut
    // at any point, on whichever path each piece's length takes.
    for (std::size_t cut : {0, 1, 255, 1023, 1024, 5000, 99'999, 100'000}) {
      CAPTURE(cut);
      const auto all = std::span<const std::byte>(data);
      CHECK(~ecopt::detail::crc32c_update(ecopt::detail::crc32c_update(0xFFFFFFFFu, all.first(cut)),
                                          all.subspan(cut)) == ecopt::detail::crc32c(all));
    }
#if ECOPT_DETAIL_CRC32C_HW
    // The folding path on its own (from 256 bytes), from any register value and
    // alignment; the constants it derives must fold every bit position.
    if (ecopt::detail::crc32c_folding_available()) {
      for (std::size_t n : {256, 257, 300, 511, 512, 767, 768, 1000, 5000, 65'536}) {
        for (std::uint32_t init : {0u, 0xFFFFFFFFu, 0x9E3779B9u}) {
          for (std::size_t offset : {0, 1, 13}) {
            CAPTURE(n);
            CAPTURE(init);
            CAPTURE(offset);
            CHECK(ecopt::detail::crc32c_update_vpclmul(init, data.data() + offset, n) ==
                  ecopt::detail::crc32c_update_portable(init, data.data() + offset, n));
          }
        }
      }
      // A single flipped bit anywhere changes the checksum.
      auto flipped = std::vector<std::byte>(data.begin(), data.begin() + 4096);
      const std::uint32_t clean = ecopt::detail::crc32c(flipped);
      for (std::size_t bit = 0; bit < 4096 * 8; bit += 997) {
        flipped[bit / 8] ^= std::byte{static_cast<unsigned char>(1u << (bit % 8))};
        CHECK(ecopt::detail::crc32c(flipped) != clean);
        flipped[bit / 8] ^= std::byte{static_cast<unsigned char>(1u << (bit % 8))};
      }
    } else {
      MESSAGE("this CPU lacks AVX-512 VPCLMULQDQ: the folding path is not exercised");
    }
#endif
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
    // A peer of the unauthenticated protocol (version 1) is refused.
    CHECK(contains(error_of(resealed(4, std::byte{1})), "unsupported frame version 1"));
    CHECK(contains(error_of(resealed(5, std::byte{0})), "kind 0"));
    CHECK(contains(error_of(resealed(5, std::byte{99})), "kind 99"));
    CHECK(contains(error_of(resealed(6, std::byte{2})), "flags are 2"));
    // The "no payload checksum" flag on a frame that has one is a broken header.
    CHECK(contains(error_of(resealed(6, std::byte{1})), "without a payload checksum"));
    CHECK(contains(error_of(good, 99), "exceeds the maximum of 99 bytes"));

    auto corrupt = payload;
    corrupt[50] ^= std::byte{0x10};
    CHECK_THROWS_WITH_AS(wire::check_payload(h, corrupt), doctest::Contains("payload checksum"),
                         ecopt::transport_error);

    // Without a payload checksum (tcp_options::payload_checksum = false): the
    // header says so, and only the header is checked.
    const wire::header_bytes unchecked =
        wire::make_header(wire::frame_kind::data, 3, 0xEC0C1234u, payload, false);
    const wire::frame_header u = wire::parse_header(unchecked, 1000);
    CHECK(u.flags == wire::flag_payload_unchecked);
    CHECK(u.payload_crc == 0u);
    CHECK_NOTHROW(wire::check_payload(u, corrupt));
    wire::header_bytes unchecked_flipped = unchecked;
    unchecked_flipped[6] ^= std::byte{0x01};  // clearing the flag breaks the header's checksum
    CHECK(contains(error_of(unchecked_flipped), "header checksum"));
  }

  TEST_CASE("ranks with and without payload checksums talk to each other") {
    // Rank 0 sends unchecked frames, rank 1 checked ones; both directions
    // deliver every size intact, and the wire bytes are the same as with checksums.
    const std::vector<std::size_t> sizes{0, 1, 4097, 300'000};
    const auto w = run_tcp(
        2,
        [&](tcp_transport& t) {
          const int peer = 1 - t.rank();
          int wrong = 0;
          std::vector<std::byte> into;
          for (std::size_t i = 0; i < sizes.size(); ++i) {
            t.send(peer, 5, pattern(sizes[i], static_cast<unsigned>(t.rank() + 1)));
          }
          for (std::size_t i = 0; i < sizes.size(); ++i) {
            t.recv(peer, 5, into);
            if (into != pattern(sizes[i], static_cast<unsigned>(peer + 1))) ++wrong;
          }
          return std::pair{wrong, t.wire_bytes_sent()};
        },
        {}, [](int rank, ecopt::tcp_options& o) { o.payload_checksum = rank != 0; });
    REQUIRE_MESSAGE(w.all_ok(), w.error_text());
    std::uint64_t expected = 4 * wire::header_size;
    for (const std::size_t size : sizes) expected += size;
    for (int r = 0; r < 2; ++r) {
      CHECK(w.values[static_cast<std::size_t>(r)]->first == 0);
      CHECK(w.values[static_cast<std::size_t>(r)]->second == expected);
    }
  }

  TEST_CASE("wire_bytes_sent counts every data frame's 32-byte header beside the payload") {
    // (Delivery at every size is part of the transport contract suite.)
    const std::vector<std::size_t> sizes{0, 1, 4097};
    const auto w = run_tcp(2, [&](tcp_transport& t) {
      const int peer = 1 - t.rank();
      std::vector<std::byte> into;
      for (std::size_t i = 0; i < sizes.size(); ++i) {
        t.send(peer, static_cast<ecopt::message_tag>(i), pattern(sizes[i], 3));
      }
      if (t.rank() == 0) t.send(1, 99, pattern(1000, 77));
      for (std::size_t i = 0; i < sizes.size(); ++i) {
        t.recv(peer, static_cast<ecopt::message_tag>(i), into);
      }
      if (t.rank() == 1) t.recv(0, 99, into);
      return std::pair{t.bytes_sent(), t.wire_bytes_sent()};
    });
    REQUIRE_MESSAGE(w.all_ok(), w.error_text());
    const std::uint64_t small = 4098;
    CHECK(w.values[0]->first == small + 1000);
    CHECK(w.values[1]->first == small);
    CHECK(w.values[0]->second == small + 1000 + 4 * wire::header_size);
    CHECK(w.values[1]->second == small + 3 * wire::header_size);
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

  TEST_CASE("running out of memory while reading a frame fails the link, naming the peer") {
    // Allocations of 1 MiB and more fail while a 4 MiB frame arrives: whoever
    // reads it (the io thread or the waiting recv) must release the link and
    // report the peer; a second recv must fail too, not wait for the link.
    const auto big = pattern(std::size_t{4} << 20, 3);
    std::promise<std::uint16_t> port;
    auto port_known = port.get_future();
    std::promise<void> waiting;
    std::string first = "rank 0 never finished";
    std::string second = "not tried";
    std::thread rank0([&] {
      try {
        tcp_transport t({.rank = 0,
                         .world_size = 2,
                         .timeout = 10s,
                         .connect_timeout = 10s,
                         .max_message_bytes = std::uint64_t{64} << 20,
                         .on_listening = [&](std::uint16_t p) { port.set_value(p); }});
        std::vector<std::byte> into;
        waiting.set_value();
        try {
          t.recv(1, 7, into);
          first.clear();
        } catch (const ecopt::transport_error& e) {
          first = e.what();
        } catch (const std::exception& e) {
          first = std::string("not a transport_error: ") + e.what();
          return;  // (before the fix the link stayed taken: a second recv would spin)
        }
        try {
          t.recv(1, 7, into);
          second.clear();
        } catch (const std::exception& e) {
          second = e.what();
        }
      } catch (const std::exception& e) {
        first = e.what();
      }
    });
    raw_peer peer;
    peer.join_as_rank_1(port_known.get());
    waiting.get_future().wait();
    std::this_thread::sleep_for(50ms);  // recv (most likely) reads the link itself
    {
      const ecopt::test::allocation_limit limit(std::size_t{1} << 20);
      const auto header = wire::make_header(wire::frame_kind::data, 1, 7, big);
      boost::system::error_code ignored;  // rank 0 may close the connection midway
      asio::write(peer.socket, std::array{asio::buffer(header), asio::buffer(big)}, ignored);
      rank0.join();
    }
    CAPTURE(first);
    CAPTURE(second);
    CHECK(contains(first, "rank 0: cannot take a frame from rank 1: std::bad_alloc"));
    CHECK(contains(second, "rank 0: cannot take a frame from rank 1: std::bad_alloc"));
  }

  TEST_CASE("a forged length costs memory only for the bytes that arrive") {
    // A sealed header announcing 1 GiB - 1 (within a 1 GiB limit), 100 KiB of
    // its payload, then the peer hangs up: no allocation of 1 MiB or more may
    // happen meanwhile (refused here, it would fail the link with bad_alloc).
    const auto some = pattern(std::size_t{100} << 10, 4);
    std::string error;
    {
      const ecopt::test::allocation_limit limit(std::size_t{1} << 20);
      error = rank0_against(
          [&](raw_peer& p) {
            wire::header_bytes h;
            wire::encode_header({.kind = wire::frame_kind::data,
                                 .sender = 1,
                                 .tag = 7,
                                 .length = (std::uint64_t{1} << 30) - 1,
                                 .payload_crc = 0},
                                h);
            p.write_frame(h, some);
            std::this_thread::sleep_for(100ms);
            p.socket.close();
          },
          std::uint64_t{1} << 30);
    }
    CAPTURE(error);
    CHECK(contains(error, "rank 0: rank 1 closed the connection without a goodbye"));
  }

  TEST_CASE("a flood of messages nobody takes stops at max_queued_bytes; recv names it") {
    // A raw rank 1 floods rank 0 with 64 KiB frames of tag 99 while rank 0
    // takes nothing. Rank 0 stops reading at its 1 MiB queue, so the peer's
    // writes block after that plus what the sockets buffer (at most ~36 MiB
    // on Linux loopback) -- without the bound all 160 MiB went in. Rank 0's
    // recv of tag 7 then names the peer and the tag that is in the way.
    std::promise<std::uint16_t> port;
    auto port_known = port.get_future();
    std::promise<void> flooded;
    auto flood_over = flooded.get_future().share();
    std::string error = "rank 0 never finished";
    std::thread rank0([&] {
      try {
        tcp_transport t({.rank = 0,
                         .world_size = 2,
                         .timeout = 10s,
                         .connect_timeout = 10s,
                         .max_queued_bytes = std::uint64_t{1} << 20,
                         .on_listening = [&](std::uint16_t p) { port.set_value(p); }});
        flood_over.wait();
        std::vector<std::byte> into;
        t.recv(1, 7, into);
        error.clear();
      } catch (const std::exception& e) {
        error = e.what();
      }
    });
    raw_peer peer;
    peer.join_as_rank_1(port_known.get());
    const auto payload = pattern(std::size_t{64} << 10, 6);
    const auto header = wire::make_header(wire::frame_kind::data, 1, 99, payload);
    std::vector<std::byte> frame(header.begin(), header.end());
    frame.insert(frame.end(), payload.begin(), payload.end());
    const std::size_t attempted = std::size_t{160} << 20;
    std::size_t written = 0;
    peer.socket.non_blocking(true);
    auto blocked_since = std::chrono::steady_clock::now();
    while (written < attempted) {
      boost::system::error_code ec;
      const std::size_t offset = written % frame.size();
      const std::size_t n =
          peer.socket.write_some(asio::buffer(frame.data() + offset, frame.size() - offset), ec);
      written += n;
      if (n > 0) blocked_since = std::chrono::steady_clock::now();
      if (ec == asio::error::would_block) {
        if (std::chrono::steady_clock::now() - blocked_since > 500ms) break;  // rank 0 stopped
        std::this_thread::sleep_for(1ms);
      } else if (ec) {
        break;
      }
    }
    flooded.set_value();
    peer.socket.close();  // (the queued messages stay in front of the end of the stream)
    rank0.join();
    CAPTURE(written);
    CAPTURE(error);
    CHECK(written < (std::size_t{64} << 20));
    CHECK(contains(error,
                   "rank 0: protocol mismatch: expected tag 7 from rank 1 but its next "
                   "message has tag 99"));
  }

  TEST_CASE("a sender that runs ahead of max_queued_bytes is paced, loses nothing, and closes") {
    // Rank 0 sends 40 messages of 256 KiB before rank 1 takes any; rank 1's
    // queue holds 1 MiB, so its reading pauses and resumes as it takes them.
    // Then rank 0 sends 8 more that rank 1 never takes: closing still
    // completes (the paused link is read again for the goodbye).
    constexpr int count = 40;
    const auto w =
        run_tcp(2,
                [&](tcp_transport& t) {
                  int wrong = 0;
                  if (t.rank() == 0) {
                    for (int i = 0; i < count + 8; ++i) {
                      t.send(1, 3, pattern(std::size_t{256} << 10, static_cast<unsigned>(i)));
                    }
                  } else {
                    std::this_thread::sleep_for(100ms);  // let the queue fill and pause
                    std::vector<std::byte> into;
                    for (int i = 0; i < count; ++i) {
                      t.recv(0, 3, into);
                      if (into != pattern(std::size_t{256} << 10, static_cast<unsigned>(i)))
                        ++wrong;
                    }
                  }
                  return wrong;
                },
                {.timeout = 20s, .max_queued_bytes = std::uint64_t{1} << 20});
    REQUIRE_MESSAGE(w.all_ok(), w.error_text());
    for (const auto& wrong : w.values) CHECK(*wrong == 0);
  }

  TEST_CASE("text a peer sends is escaped before it reaches an error message") {
    CHECK(wire::printable("rank 3: ok") == "rank 3: ok");
    CHECK(wire::printable(std::string("a\x1b[2J\nb\\c\0\xff", 11)) ==
          "a\\x1b[2J\\x0ab\\x5cc\\x00\\xff");
    // A hostile abort reason: escape sequences and a forged second line.
    const std::string reason = "boom\x1b[31m\nrank 0: all is well\r";
    const auto bytes = std::as_bytes(std::span(reason.data(), reason.size()));
    const std::string error = rank0_against([&](raw_peer& p) {
      p.write_frame(wire::make_header(wire::frame_kind::abort, 1, 0, bytes), bytes);
    });
    CAPTURE(error);
    CHECK(contains(error, "peer rank 1 failed: boom\\x1b[31m\\x0arank 0: all is well\\x0d"));
    CHECK(error.find('\x1b') == std::string::npos);
    CHECK(error.find('\n') == std::string::npos);
    CHECK(error.find('\r') == std::string::npos);
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
    CHECK(contains(join_error(2, "beta"), "rank 1: tcp rendezvous failed: rank 0 (" + address +
                                              ") could not prove it holds this job's token"));
    // Without the token a peer learns nothing of the job, not even its world size.
    const std::string stranger = join_error(3, "beta");
    CHECK(contains(stranger, "could not prove it holds this job's token"));
    CHECK_FALSE(contains(stranger, "world size 2"));

    // Raw clients: a rank out of range, garbage, and one that never speaks
    // (it must not hold up the others).
    raw_peer out_of_range;
    out_of_range.connect(p);
    {
      const auto [h, reason] = out_of_range.handshake(5, 2, "alpha");
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

  TEST_CASE("a stranger without the token is refused and learns nothing of the job") {
    // A raw stranger claims rank 1 with a wrong token. All it gets is rank
    // 0's nonce and proof (64 bytes it cannot check) and a refusal that says
    // nothing of the world; then the real rank 1 joins.
    rank0_thread rank0({.rank = 0, .world_size = 2, .job_token = "alpha", .connect_timeout = 20s});
    const std::uint16_t p = rank0.port.get();
    raw_peer stranger;
    stranger.connect(p);
    const auto [challenge, challenge_bytes] = stranger.handshake(1, 2, "beta", nullptr, false);
    const auto [verdict, reason] = stranger.read_frame();
    CHECK(challenge.kind == wire::frame_kind::challenge);
    CHECK(challenge_bytes.size() == wire::max_challenge_bytes);
    CHECK(verdict.kind == wire::frame_kind::reject);
    CHECK(text_of(reason) ==
          "authentication failed: no proof of this job's token (a process of another job, a "
          "different ECOPT_JOB_TOKEN, or a replayed handshake)");
    const std::string joined = rank1_error(p, "alpha");
    rank0.join();
    CHECK(rank0.error.empty());
    CHECK(joined.empty());
  }

  TEST_CASE("a replayed handshake is refused: the proof covers a fresh nonce") {
    // Raw rank 1 joins a world of three with the right token while its bytes
    // are recorded; an eavesdropper replays them on a new connection and is
    // refused; raw rank 2 joins and rank 0 completes.
    rank0_thread rank0({.rank = 0, .world_size = 3, .job_token = "alpha", .connect_timeout = 20s});
    const std::uint16_t p = rank0.port.get();
    raw_peer rank1;
    rank1.connect(p);
    std::vector<std::byte> recorded;
    (void)rank1.handshake(1, 3, "alpha", &recorded, false);  // (rank 0 answers once all joined)
    raw_peer replay;
    replay.connect(p);
    replay.write(recorded);  // hello and proof as they went over the wire
    const auto [challenge, challenge_bytes] = replay.read_frame();
    const auto [verdict, reason] = replay.read_frame();
    CHECK(challenge.kind == wire::frame_kind::challenge);
    CHECK(verdict.kind == wire::frame_kind::reject);
    CHECK(contains(text_of(reason), "authentication failed"));
    raw_peer rank2;
    rank2.connect(p);
    const auto [directory2, table2] = rank2.handshake(2, 3, "alpha");
    const auto [directory1, table1] = rank1.read_frame();
    rank1.socket.close();  // (rank 0 then closes at once)
    rank2.socket.close();
    rank0.join();
    CHECK(directory1.kind == wire::frame_kind::directory);
    CHECK(directory2.kind == wire::frame_kind::directory);
    CHECK(rank0.error.empty());
  }

  TEST_CASE("a rank claimed twice fails both claimants and rank 0 at once") {
    // Two processes hold the token and both start as rank 1 of 3: rank 0
    // refuses both, saying why, and gives up itself -- before rank 2 comes,
    // not at the connect timeout.
    std::promise<std::uint16_t> port;
    std::shared_future<std::uint16_t> port_known = port.get_future().share();
    std::vector<std::string> errors(3, "unset");  // rank 0, rank 1 (A), rank 1 (B)
    auto run_rank = [&](std::size_t slot, int rank) {
      try {
        tcp_options o{.rank = rank, .world_size = 3, .job_token = "alpha", .connect_timeout = 20s};
        if (rank == 0) {
          o.on_listening = [&](std::uint16_t p) { port.set_value(p); };
        } else {
          o.address = "127.0.0.1:" + std::to_string(port_known.get());
        }
        tcp_transport t(o);
        errors[slot] = "formed a world";
      } catch (const std::exception& e) {
        errors[slot] = e.what();
      }
    };
    std::vector<std::thread> threads;
    threads.emplace_back(run_rank, 0, 0);
    threads.emplace_back(run_rank, 1, 1);
    threads.emplace_back(run_rank, 2, 1);
    for (auto& t : threads) t.join();
    CAPTURE(errors[0]);
    CHECK(contains(errors[0], "rank 0: tcp rendezvous failed: rank 1 was claimed twice, from "));
    for (std::size_t slot : {1, 2}) {
      CAPTURE(errors[slot]);
      CHECK(contains(errors[slot], "rank 1: tcp rendezvous failed: rank 0 (127.0.0.1:"));
      CHECK(contains(errors[slot], ") refused the handshake: rank 1 was claimed twice, from "));
    }
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

  TEST_CASE("a connection that never completes its hello is closed at its handshake deadline") {
    // A slow-loris stranger sends 10 bytes of a header and stalls. Rank 0
    // closes it after handshake_timeout (the read below sees the end), long
    // before its connect_timeout, and the real rank 1 then forms the world.
    rank0_thread rank0(
        {.rank = 0, .world_size = 2, .connect_timeout = 20s, .handshake_timeout = 300ms});
    const std::uint16_t p = rank0.port.get();
    raw_peer loris;
    loris.connect(p);
    const auto header = wire::make_header(wire::frame_kind::hello, 1, 0, {});
    loris.write(std::span(header).first(10));
    std::array<std::byte, 1> byte{};
    boost::system::error_code ec;
    asio::read(loris.socket, asio::buffer(byte), ec);  // returns when rank 0 closes it
    const bool closed = ec == asio::error::eof || ec == asio::error::connection_reset;
    const std::string joined = rank1_error(p);
    rank0.join();
    CAPTURE(ec.message());
    CHECK(closed);
    CHECK(rank0.error.empty());
    CHECK(joined.empty());
  }

  TEST_CASE("connections beyond max_pending_handshakes push out the oldest; the world forms") {
    // 20 idle strangers against a cap of 4 (and a long handshake deadline):
    // rank 0 closes the oldest 16 as the newer ones come, then rank 1 joins.
    rank0_thread rank0({.rank = 0,
                        .world_size = 2,
                        .connect_timeout = 20s,
                        .handshake_timeout = 20s,
                        .max_pending_handshakes = 4});
    const std::uint16_t p = rank0.port.get();
    std::vector<std::unique_ptr<raw_peer>> flood;
    for (int i = 0; i < 20; ++i) {
      flood.push_back(std::make_unique<raw_peer>());
      flood.back()->connect(p);
    }
    int closed = 0;
    for (int i = 0; i < 16; ++i) {
      std::array<std::byte, 1> byte{};
      boost::system::error_code ec;
      asio::read(flood[static_cast<std::size_t>(i)]->socket, asio::buffer(byte), ec);
      if (ec == asio::error::eof || ec == asio::error::connection_reset) ++closed;
    }
    const std::string joined = rank1_error(p);
    rank0.join();
    CHECK(closed == 16);
    CHECK(rank0.error.empty());
    CHECK(joined.empty());
  }

  TEST_CASE("running out of file descriptors in the rendezvous is reported as such") {
    // A child process (fork) lowers its RLIMIT_NOFILE to a few more than it
    // has open and starts rank 0 of 4; this process opens 20 connections to
    // it. The child must fail at once naming the exhaustion, not retry and
    // then blame missing ranks at its connect timeout.
    int to_parent[2];
    REQUIRE(::pipe(to_parent) == 0);
    const pid_t child = ::fork();
    REQUIRE(child >= 0);
    if (child == 0) {
      ::close(to_parent[0]);
      std::string out;
      try {
        std::size_t open_now = 0;
        for ([[maybe_unused]] const auto& e :
             std::filesystem::directory_iterator("/proc/self/fd")) {
          ++open_now;
        }
        rlimit limit{};
        ::getrlimit(RLIMIT_NOFILE, &limit);
        limit.rlim_cur = open_now + 8;
        ::setrlimit(RLIMIT_NOFILE, &limit);
        tcp_transport t({.rank = 0,
                         .world_size = 4,
                         .connect_timeout = 5s,
                         .on_listening = [&](std::uint16_t p) {
                           [[maybe_unused]] const auto n = ::write(to_parent[1], &p, sizeof p);
                         }});
        out = "formed a world";
      } catch (const std::exception& e) {
        out = e.what();
      }
      [[maybe_unused]] const auto n = ::write(to_parent[1], out.data(), out.size());
      ::_exit(0);
    }
    ::close(to_parent[1]);
    std::uint16_t p = 0;
    REQUIRE(::read(to_parent[0], &p, sizeof p) == static_cast<ssize_t>(sizeof p));
    std::vector<std::unique_ptr<raw_peer>> flood;
    for (int i = 0; i < 20; ++i) {
      flood.push_back(std::make_unique<raw_peer>());
      boost::system::error_code ec;
      flood.back()->socket.connect(tcp::endpoint(asio::ip::make_address("127.0.0.1"), p), ec);
      if (ec) break;  // the child gave up already and closed its port
    }
    std::string message;
    char chunk[512];
    for (ssize_t n; (n = ::read(to_parent[0], chunk, sizeof chunk)) > 0;) {
      message.append(chunk, static_cast<std::size_t>(n));
    }
    ::close(to_parent[0]);
    int status = 0;
    ::waitpid(child, &status, 0);
    CAPTURE(message);
    CHECK(contains(message,
                   "rank 0: tcp rendezvous failed: out of file descriptors while "
                   "accepting a connection (Too many open files; this process may open"));
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

  TEST_CASE(
      "recv_into lands a message in place, leaves one of another size queued, and keeps a "
      "half-read body whole across a timeout") {
    std::promise<std::uint16_t> port;
    auto port_known = port.get_future();
    std::atomic<int> stage{0};  // rank 0's progress, for the peer to follow
    auto wait_for = [&](int s) {
      while (stage.load() < s) std::this_thread::sleep_for(1ms);
    };
    const auto first = pattern(1000, 1);
    const auto second = pattern(500, 2);
    const auto third = pattern(100000, 3);
    struct seen {
      std::size_t first_size = 0, second_size = 0, second_recv = 0;
      bool first_equal = false, second_untouched = false, second_equal = false;
      std::string timeout_error;
      bool target_kept = false, third_equal = false;
      std::string error;
    } r;
    std::thread rank0([&] {
      try {
        tcp_transport t({.rank = 0,
                         .world_size = 2,
                         .timeout = 400ms,
                         .connect_timeout = 10s,
                         .on_listening = [&](std::uint16_t p) { port.set_value(p); }});
        std::vector<std::byte> target(1000, std::byte{0xAA});
        stage = 1;
        r.first_size = t.recv_into(1, 7, target);
        r.first_equal = target == first;
        std::fill(target.begin(), target.end(), std::byte{0xAA});
        r.second_size = t.recv_into(1, 7, target);  // 500 bytes: left queued
        r.second_untouched = std::all_of(target.begin(), target.end(),
                                         [](std::byte b) { return b == std::byte{0xAA}; });
        std::vector<std::byte> into;
        t.recv(1, 7, into);
        r.second_recv = into.size();
        r.second_equal = into == second;
        std::vector<std::byte> big(100000, std::byte{0xAA});
        stage = 2;
        try {
          (void)t.recv_into(1, 7, big);  // the peer sends 40000 bytes, then stalls
        } catch (const ecopt::transport_error& e) {
          r.timeout_error = e.what();
        }
        const auto after_timeout = big;
        stage = 3;  // the peer sends the rest now
        t.recv(1, 7, into);
        r.third_equal = into == third;
        r.target_kept = big == after_timeout;  // nothing wrote it after recv_into returned
        stage = 4;
      } catch (const std::exception& e) {
        r.error = e.what();
        stage = 4;
      }
    });
    raw_peer peer;
    peer.join_as_rank_1(port_known.get());
    auto header = [](std::span<const std::byte> payload) {
      return wire::make_header(wire::frame_kind::data, 1, 7, payload);
    };
    wait_for(1);
    std::this_thread::sleep_for(20ms);  // rank 0 is (most likely) waiting: read in place
    peer.write_frame(header(first), first);
    peer.write_frame(header(second), second);
    wait_for(2);
    std::this_thread::sleep_for(20ms);
    peer.write(header(third));
    peer.write(std::span(third).first(40000));
    wait_for(3);
    peer.write(std::span(third).subspan(40000));
    wait_for(4);
    peer.write_frame(wire::make_header(wire::frame_kind::goodbye, 1, 0, {}));
    rank0.join();
    REQUIRE_MESSAGE(r.error.empty(), r.error);
    CHECK(r.first_size == 1000);
    CHECK(r.first_equal);
    CHECK(r.second_size == 500);
    CHECK(r.second_untouched);
    CHECK(r.second_recv == 500);
    CHECK(r.second_equal);
    CHECK(contains(r.timeout_error,
                   "rank 0: timed out after 400 ms waiting for a message from rank 1 (tag 7)"));
    CHECK(r.third_equal);
    CHECK(r.target_kept);
  }

  TEST_CASE("a stream of mixed sizes arrives whole while recv and recv_into take turns") {
    // Each rank sends its peer 240 messages, one at a time or in bursts of 8,
    // and receives the peer's: sizes from empty to 300 KiB (several reads
    // each), taken alternately by recv and recv_into, with pauses that let
    // the io thread read ahead. Every way the link's reader passes between
    // the io thread and the caller is taken; a lost wake-up would show as a
    // timeout, a torn hand-over as wrong bytes.
    constexpr int count = 240;
    constexpr std::array<std::size_t, 6> sizes{0, 7, 4096, 65539, 131072, 300007};
    auto size_of = [&](int i) { return sizes[static_cast<std::size_t>(i) % sizes.size()]; };
    const auto w = run_tcp(
        2,
        [&](tcp_transport& t) {
          const int peer = 1 - t.rank();
          int wrong = 0;
          std::vector<std::byte> into;
          for (int first = 0; first < count;) {
            const int burst = std::min((first / 8) % 2 == 0 ? 1 : 8, count - first);
            for (int i = first; i < first + burst; ++i) {
              t.send(peer, 5, pattern(size_of(i), static_cast<unsigned>(i + 1000 * t.rank())));
            }
            for (int i = first; i < first + burst; ++i) {
              const auto expected = pattern(size_of(i), static_cast<unsigned>(i + 1000 * peer));
              if (i % 2 == 0) {
                t.recv(peer, 5, into);
                if (into != expected) ++wrong;
              } else {
                std::vector<std::byte> target(size_of(i), std::byte{0xEE});
                if (t.recv_into(peer, 5, target) != target.size() || target != expected) ++wrong;
              }
              if (i % 11 == t.rank()) std::this_thread::sleep_for(2ms);
            }
            first += burst;
          }
          return wrong;
        },
        {.timeout = 20s});
    REQUIRE_MESSAGE(w.all_ok(), w.error_text());
    for (const auto& wrong : w.values) CHECK(*wrong == 0);
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

}  // namespace tcp_transport_test
