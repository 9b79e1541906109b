// mpi_transport under mpirun -np 1..4 (tests/CMakeLists.txt starts them):
// point-to-point, tags, recv_any, deadlines, every collective (mapped to MPI's
// own) against serial references, a peer's goodbye, and a solver run that
// matches the same run on threads. Every rank runs every case; checks are per
// rank. (The transport contract suite runs on MPI too: mpi.contracts.)
#include <doctest/doctest.h>

#include <Eigen/Core>
#include <algorithm>
#include <chrono>
#include <cmath>
#include <cstddef>
#include <cstdint>
#include <numeric>
#include <span>
#include <string>
#include <tuple>
#include <utility>
#include <vector>

#include "ecopt/collectives/allgather.hpp"
#include "ecopt/collectives/allreduce.hpp"
#include "ecopt/collectives/barrier.hpp"
#include "ecopt/collectives/broadcast.hpp"
#include "ecopt/compensators/error_feedback.hpp"
#include "ecopt/compressors/no_compression.hpp"
#include "ecopt/compressors/top_k.hpp"
#include "ecopt/error.hpp"
#include "ecopt/parameter_server.hpp"
#include "ecopt/problems/least_squares.hpp"
#include "ecopt/problems/quadratic.hpp"
#include "ecopt/solver.hpp"
#include "ecopt/transports/mpi_transport.hpp"
#include "ecopt/transports/thread_transport.hpp"

namespace {

using namespace std::chrono_literals;
using ecopt::collective_workspace;
using ecopt::mpi_transport;

mpi_transport make_transport(std::chrono::milliseconds timeout = 30s) {
  return mpi_transport(MPI_COMM_WORLD, ecopt::mpi_options{.timeout = timeout});
}

/// Byte i of the message rank `from` sends to rank `to` with `seq`.
std::byte pattern(int from, int to, std::size_t i, int seq) {
  return static_cast<std::byte>((i * 131 + static_cast<std::size_t>(from) * 17 +
                                 static_cast<std::size_t>(to) * 7 + static_cast<std::size_t>(seq)) &
                                0xffu);
}

std::vector<std::byte> message(int from, int to, std::size_t size, int seq) {
  std::vector<std::byte> m(size);
  for (std::size_t i = 0; i < size; ++i) m[i] = pattern(from, to, i, seq);
  return m;
}

/// Rank r's i-th input: not dyadic, so summation order matters.
double input(int r, std::size_t i) {
  return 0.1 * static_cast<double>(r + 1) + 1e-3 * static_cast<double>(i % 97) - 0.05;
}

}  // namespace

TEST_CASE("messages of 0 B to 64 MiB go around the ring intact and in order") {
  auto t = make_transport();
  const int n = t.size();
  if (n == 1) {
    CHECK_THROWS_AS(t.send(0, 1, {}), ecopt::invalid_argument);
    return;
  }
  const int right = (t.rank() + 1) % n;
  const int left = (t.rank() + n - 1) % n;
  const std::size_t sizes[] = {0, 1, 7, 4096, 1u << 20, 64u << 20};
  int seq = 0;
  for (const std::size_t size : sizes) {
    // Two messages back to back: the second must not overtake the first.
    const auto first = message(t.rank(), right, size, seq);
    const auto second = message(t.rank(), right, size, seq + 1);
    t.send(right, 7, first);
    t.send(right, 7, second);
    std::vector<std::byte> got;
    t.recv(left, 7, got);
    CHECK(got == message(left, t.rank(), size, seq));
    t.recv(left, 7, got);
    CHECK(got == message(left, t.rank(), size, seq + 1));
    seq += 2;
  }
  std::uint64_t expected = 0;
  for (const std::size_t size : sizes) expected += 2 * size;
  CHECK(t.bytes_sent() == expected);
}

TEST_CASE("a message with another tag is a transport_error naming both tags") {
  auto t = make_transport();
  if (t.size() == 1) return;
  if (t.rank() == 1) t.send(0, 41, message(1, 0, 10, 0));
  if (t.rank() == 0) {
    std::vector<std::byte> got;
    try {
      t.recv(1, 42, got);
      FAIL("recv accepted a message with the wrong tag");
    } catch (const ecopt::transport_error& e) {
      const std::string what = e.what();
      // The same words as thread_transport and tcp_transport use.
      CHECK(what.find("rank 0: protocol mismatch: expected tag 42 from rank 1 but its next "
                      "message has tag 41") != std::string::npos);
    }
  }
  collective_workspace ws;
  ecopt::barrier(t, ws);
}

TEST_CASE("bad peers and oversized messages are invalid_argument") {
  ecopt::mpi_transport t(MPI_COMM_WORLD, ecopt::mpi_options{.max_message_bytes = 100});
  std::vector<std::byte> got;
  CHECK_THROWS_AS(t.send(t.size(), 1, {}), ecopt::invalid_argument);
  CHECK_THROWS_AS(t.send(-1, 1, {}), ecopt::invalid_argument);
  CHECK_THROWS_AS(t.recv(t.rank(), 1, got), ecopt::invalid_argument);
  if (t.size() > 1) {
    CHECK_THROWS_AS(t.send((t.rank() + 1) % t.size(), 1, std::vector<std::byte>(101)),
                    ecopt::invalid_argument);
  }
  CHECK_THROWS_AS(ecopt::mpi_transport(MPI_COMM_WORLD, ecopt::mpi_options{.timeout = 0ms}),
                  ecopt::invalid_argument);
  CHECK(t.bytes_sent() == 0);
}

TEST_CASE("a recv nobody answers fails within its deadline") {
  auto t = make_transport(300ms);
  if (t.size() > 1 && t.rank() == 0) {
    std::vector<std::byte> got;
    const auto start = std::chrono::steady_clock::now();
    try {
      t.recv(1, 5, got);
      FAIL("recv returned without a message");
    } catch (const ecopt::transport_error& e) {
      // The same words as thread_transport and tcp_transport use.
      CHECK(std::string(e.what()).find("rank 0: timed out after 300 ms waiting for a message "
                                       "from rank 1 (tag 5)") != std::string::npos);
    }
    CHECK(std::chrono::steady_clock::now() - start >= 300ms);
  }
  auto sync = make_transport();
  collective_workspace ws;
  ecopt::barrier(sync, ws);
}

TEST_CASE("recv_any takes every peer's message once and names the sender") {
  auto t = make_transport();
  if (t.size() == 1) {
    std::vector<std::byte> got;
    CHECK_THROWS_AS(t.recv_any(3, got), ecopt::invalid_argument);
    return;
  }
  if (t.rank() != 0) {
    // A message with another tag first: recv_any(3) must leave it queued.
    t.send(0, 4, message(t.rank(), 0, 5, 4));
    t.send(0, 3, message(t.rank(), 0, 100 + static_cast<std::size_t>(t.rank()), 3));
  } else {
    std::vector<int> seen;
    std::vector<std::byte> got;
    // The tag-4 messages are each sender's next: take them first with recv_any(4).
    for (int i = 1; i < t.size(); ++i) {
      const int from = t.recv_any(4, got);
      CHECK(got == message(from, 0, 5, 4));
    }
    for (int i = 1; i < t.size(); ++i) {
      const int from = t.recv_any(3, got);
      CHECK(got == message(from, 0, 100 + static_cast<std::size_t>(from), 3));
      seen.push_back(from);
    }
    std::sort(seen.begin(), seen.end());
    std::vector<int> all(static_cast<std::size_t>(t.size() - 1));
    std::iota(all.begin(), all.end(), 1);
    CHECK(seen == all);
  }
  collective_workspace ws;
  ecopt::barrier(t, ws);
}

TEST_CASE("native collectives agree with serial references on every rank") {
  bool staged = true;
  SUBCASE("on the transport's copy of the data") { staged = true; }
  SUBCASE("in the caller's buffers (stage_collectives = false)") { staged = false; }
  mpi_transport t(MPI_COMM_WORLD, ecopt::mpi_options{.timeout = 30s, .stage_collectives = staged});
  const int n = t.size();
  collective_workspace ws;
  for (const std::size_t size :
       {std::size_t{0}, std::size_t{1}, std::size_t{5}, std::size_t{1} << 20}) {
    CAPTURE(size);
    std::vector<double> sum(size), max(size);
    std::vector<std::int64_t> ints(size);
    for (std::size_t i = 0; i < size; ++i) {
      sum[i] = input(t.rank(), i);
      max[i] = (t.rank() % 2 == 0 ? 1 : -1) * input(t.rank(), i);
      ints[i] = static_cast<std::int64_t>(i) * (t.rank() + 1);
    }
    ecopt::allreduce_sum(t, std::span<double>(sum), ws);
    ecopt::allreduce_max(t, std::span<double>(max), ws);
    ecopt::allreduce_sum(t, std::span<std::int64_t>(ints), ws);
    bool sums_ok = true, maxima_ok = true, ints_ok = true;
    for (std::size_t i = 0; i < size; ++i) {
      double s = 0, m = -1e300;
      std::int64_t k = 0;
      for (int r = 0; r < n; ++r) {
        s += input(r, i);
        m = std::max(m, (r % 2 == 0 ? 1 : -1) * input(r, i));
        k += static_cast<std::int64_t>(i) * (r + 1);
      }
      sums_ok = sums_ok && std::abs(sum[i] - s) <= 1e-12 * n;
      maxima_ok = maxima_ok && max[i] == m;
      ints_ok = ints_ok && ints[i] == k;
    }
    CHECK(sums_ok);
    CHECK(maxima_ok);
    CHECK(ints_ok);
    // Every rank holds the same bits: compare with rank 0's by broadcast.
    std::vector<double> root_sum = sum;
    ecopt::broadcast(t, std::span<double>(root_sum), 0, ws);
    CHECK(root_sum == sum);

    std::vector<float> mine(size), all(size * static_cast<std::size_t>(n));
    for (std::size_t i = 0; i < size; ++i) mine[i] = static_cast<float>(input(t.rank(), i));
    ecopt::allgather(t, std::span<const float>(mine), std::span<float>(all), ws);
    bool gathered_ok = true;
    for (int r = 0; r < n; ++r) {
      for (std::size_t i = 0; i < size; ++i) {
        gathered_ok = gathered_ok && all[static_cast<std::size_t>(r) * size + i] ==
                                         static_cast<float>(input(r, i));
      }
    }
    CHECK(gathered_ok);
  }
  // Blocks of different sizes, one of them empty.
  const auto own = message(t.rank(), -1, static_cast<std::size_t>(t.rank()) * 1000, 9);
  std::vector<std::vector<std::byte>> blocks;
  ecopt::allgather_bytes(t, own, blocks);
  REQUIRE(blocks.size() == static_cast<std::size_t>(n));
  for (int r = 0; r < n; ++r) {
    CHECK(blocks[static_cast<std::size_t>(r)] ==
          message(r, -1, static_cast<std::size_t>(r) * 1000, 9));
  }
  for (int root = 0; root < n; ++root) {
    std::vector<std::int32_t> data(17, t.rank() == root ? root + 100 : -1);
    ecopt::broadcast(t, std::span<std::int32_t>(data), root, ws);
    CHECK(std::all_of(data.begin(), data.end(), [&](std::int32_t v) { return v == root + 100; }));
  }
  CHECK_THROWS_AS(ecopt::broadcast(t, std::span<double>(), n, ws), ecopt::invalid_argument);
  std::vector<float> wrong(3);
  CHECK_THROWS_AS(
      ecopt::allgather(t, std::span<const float>(wrong.data(), 2), std::span<float>(wrong), ws),
      ecopt::invalid_argument);
  ecopt::barrier(t, ws);
  // bytes_sent is charged like a bandwidth-optimal algorithm would send.
  auto counted = make_transport();
  std::vector<float> v(1000, 1.0f);
  ecopt::allreduce_sum(counted, std::span<float>(v), ws);
  CHECK(counted.bytes_sent() ==
        2 * static_cast<std::uint64_t>(n - 1) * 4000 / static_cast<std::uint64_t>(n));
  CHECK(v[0] == static_cast<float>(n));
}

TEST_CASE("a solver over MPI ends where the same run on threads ends") {
  // Least squares with rank-dependent shards; top_k + error feedback takes the
  // allgather path and decodes in rank order, so MPI and threads agree bit for
  // bit on x. The loss is a sum over ranks by allreduce, whose order is each
  // implementation's own (Open MPI's, or halving-doubling on threads with 4
  // ranks): equal to rounding.
  auto t = make_transport();
  const int n = t.size();
  const std::size_t d = 40, rows = 60;
  auto shard = [&](int r) {
    Eigen::MatrixXd A(d, rows);  // one sample per column
    Eigen::VectorXd b(rows);
    for (Eigen::Index j = 0; j < A.cols(); ++j) {
      for (Eigen::Index i = 0; i < A.rows(); ++i) {
        A(i, j) = std::sin(0.37 * static_cast<double>(i * 13 + j * 7 + r * 101));
      }
    }
    // Targets from a planted solution, so the loss can go to zero.
    Eigen::VectorXd planted(d);
    for (Eigen::Index i = 0; i < planted.size(); ++i)
      planted(i) = std::cos(0.5 * static_cast<double>(i));
    b = A.transpose() * planted;
    return std::pair{A, b};
  };
  using solver_t = ecopt::solver<ecopt::top_k, ecopt::error_feedback, ecopt::sgd>;
  const solver_t s{.compressor = {.ratio = 0.1}, .optimizer = {.lr = 0.05}};
  const ecopt::run_options options{.steps = 60, .seed = 3};

  auto run = [&](auto& transport, int r) {
    auto [A, b] = shard(r);
    ecopt::least_squares<double> problem(A, b, {.batch_size = rows});
    Eigen::VectorXd x = Eigen::VectorXd::Zero(static_cast<Eigen::Index>(d));
    const auto report = s.run(transport, problem, x, options);
    return std::tuple{x, report.final_loss(), report.history.front().loss};
  };
  const auto [x_mpi, loss_mpi, initial_loss] = run(t, t.rank());
  const auto on_threads =
      ecopt::run_threads(n, [&](ecopt::thread_transport& tt) { return run(tt, tt.rank()); });
  const auto& [x_threads, loss_threads, initial_threads] = on_threads[0];
  CHECK(loss_mpi == doctest::Approx(loss_threads).epsilon(1e-13));
  CHECK((x_mpi - x_threads).cwiseAbs().maxCoeff() == 0.0);
  CHECK(initial_loss == doctest::Approx(initial_threads).epsilon(1e-13));
  CHECK(loss_mpi < 0.75 * initial_loss);  // and it did optimise
}

TEST_CASE("a parameter server over MPI ends where the same run on threads ends") {
  // Backup workers with b = 0: the server sums the updates in worker order,
  // so the order of arrival (MPI's or the threads') does not matter.
  auto t = make_transport();
  const int n = t.size();
  const ecopt::parameter_server<ecopt::top_k, ecopt::error_feedback, ecopt::sgd,
                                ecopt::backup_workers>
      server{.compressor = {.ratio = 0.25}, .optimizer = {.lr = 0.05}};
  const ecopt::run_options options{.steps = 40, .seed = 5};
  const Eigen::MatrixXd identity = Eigen::MatrixXd::Identity(16, 16);  // the problems view it
  auto run = [&](auto& transport) {
    Eigen::VectorXd centre(16);
    for (Eigen::Index i = 0; i < centre.size(); ++i) {
      centre(i) = std::sin(0.3 * static_cast<double>(i + 7 * transport.rank()));
    }
    ecopt::quadratic<double> problem(identity, centre, {.noise = 0.1});
    Eigen::VectorXd x = Eigen::VectorXd::Zero(16);
    (void)server.run(transport, problem, x, options);
    return x;
  };
  if (n == 1) {
    CHECK_THROWS_AS(run(t), ecopt::invalid_argument);  // rank 0 serves: no worker
    return;
  }
  const Eigen::VectorXd x_mpi = run(t);
  const auto on_threads =
      ecopt::run_threads(n, [&](ecopt::thread_transport& tt) { return run(tt); });
  CHECK((x_mpi - on_threads[static_cast<std::size_t>(t.rank())]).cwiseAbs().maxCoeff() == 0.0);
  CHECK(x_mpi.norm() > 0);
}

TEST_CASE("a peer's goodbye fails the recvs waiting for it and later sends to it") {
  std::string recv_error, send_error;
  {
    auto t = make_transport(10s);
    if (t.rank() == 1) t.send(0, 3, message(1, 0, 10, 3));
    if (t.rank() == 0 && t.size() > 1) {
      std::vector<std::byte> got;
      t.recv(1, 3, got);  // sent before the goodbye: still delivered
      CHECK(got == message(1, 0, 10, 3));
      try {
        t.recv(1, 3, got);
      } catch (const ecopt::transport_error& e) {
        recv_error = e.what();
      }
      try {
        t.send(1, 3, got);
      } catch (const ecopt::transport_error& e) {
        send_error = e.what();
      }
    }
    // Rank 1 closes here at once; the others wait in their destructors for
    // every goodbye, rank 0's last.
  }
  int rank = 0, size = 1;
  MPI_Comm_rank(MPI_COMM_WORLD, &rank);
  MPI_Comm_size(MPI_COMM_WORLD, &size);
  if (rank == 0 && size > 1) {
    CHECK(recv_error ==
          "rank 0: rank 1 has closed its transport without sending a message from rank 1 (tag 3)");
    CHECK(send_error == "rank 0: cannot send to rank 1 (tag 3): rank 1 has closed its transport");
  }
}
