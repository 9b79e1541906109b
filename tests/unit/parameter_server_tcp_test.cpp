// parameter_server over tcp_transport with tolerate_lost_peers: a worker
// that dies mid-run (its transport torn down by the exception, as in a
// crash) fails only its own link; the server finds it at the deadline, goes
// on with the others, and every survivor ends with the server's model. Without
// the option, the first lost peer fails the whole world, as before.
#include <doctest/doctest.h>

#include <Eigen/Core>
#include <chrono>
#include <cstdint>
#include <optional>
#include <string>
#include <vector>

#include "ecopt/ecopt.hpp"
#include "ecopt/parameter_server.hpp"
#include "support/transport_worlds.hpp"

#if ECOPT_TEST_HAVE_TCP

namespace parameter_server_tcp_test {

namespace {

constexpr Eigen::Index dim = 12;

/// f(x) = 1/2 |x - c|^2 with noisy gradients; the worker dies (throws) at
/// its `dies_at`-th gradient (never when 0).
struct mortal_quadratic {
  using scalar_type = double;
  Eigen::VectorXd centre;
  std::uint64_t dies_at = 0;
  std::uint64_t calls = 0;
  [[nodiscard]] std::size_t dim() const { return static_cast<std::size_t>(centre.size()); }
  double loss(const Eigen::Ref<const Eigen::VectorXd>& x) const {
    return 0.5 * (x - centre).squaredNorm();
  }
  void gradient(const Eigen::Ref<const Eigen::VectorXd>& x, Eigen::Ref<Eigen::VectorXd> g) const {
    g = x - centre;
  }
  void stochastic_gradient(const Eigen::Ref<const Eigen::VectorXd>& x,
                           Eigen::Ref<Eigen::VectorXd> g, ecopt::counter_rng& rng) {
    if (dies_at > 0 && ++calls == dies_at) throw std::runtime_error("worker died");
    g = x - centre;
    for (Eigen::Index j = 0; j < g.size(); ++j) g[j] += 0.1 * rng.normal();
  }
};

struct outcome {
  Eigen::VectorXd x;
  std::uint64_t steps = 0;
  std::vector<int> lost;
};

/// Server + 4 workers over TCP, `steps` model steps; rank 3 dies at its 5th
/// gradient, early in the run.
template <class Server>
auto serve_with_a_death(const Server& server, bool tolerate, std::uint64_t steps) {
  return ecopt::test::run_tcp(
      5,
      [&](ecopt::tcp_transport& t) {
        mortal_quadratic problem{Eigen::VectorXd::LinSpaced(dim, -1.0, 1.0),
                                 t.rank() == 3 ? 5u : 0u};
        Eigen::VectorXd x = Eigen::VectorXd::Zero(dim);
        const auto report = server.run(t, problem, x, {.steps = steps, .seed = 2});
        return outcome{x, report.steps, report.counts.lost_workers};
      },
      {.timeout = std::chrono::milliseconds(1500), .tolerate_lost_peers = tolerate});
}

}  // namespace

TEST_CASE("over TCP, a parameter server goes on without a worker that dies") {
  const ecopt::parameter_server backup{ecopt::top_k{.ratio = 0.5}, ecopt::error_feedback{},
                                       ecopt::sgd{.lr = 0.1}, ecopt::backup_workers{.backups = 1}};
  const auto out = serve_with_a_death(backup, true, 30);
  REQUIRE(out.values[0].has_value());
  CHECK(out.values[0]->steps == 30);
  CHECK(out.values[0]->lost == std::vector<int>{3});
  CHECK(out.errors[3].find("worker died") != std::string::npos);
  for (const int r : {1, 2, 4}) {
    REQUIRE(out.values[static_cast<std::size_t>(r)].has_value());
    CHECK((out.values[static_cast<std::size_t>(r)]->x - out.values[0]->x).norm() == 0.0);
  }
  CHECK(out.values[0]->x.norm() > 0);
}

TEST_CASE("over TCP without tolerate_lost_peers, a dead worker fails the world, named") {
  const ecopt::parameter_server async{ecopt::no_compression{}, ecopt::no_compensation{},
                                      ecopt::sgd{.lr = 0.1}, ecopt::async_sgd{}};
  // 200 updates: the server is far from done when rank 3 dies.
  const auto out = serve_with_a_death(async, false, 200);
  // The server fails; the first failure it hears of may be a peer's abort
  // that names rank 3 in its turn, so rank 3 is named somewhere in the chain.
  CHECK_FALSE(out.values[0].has_value());
  CHECK(out.failures[0] == decltype(out)::failure::transport_error);
  bool named = false;
  for (const std::string& e : out.errors) named = named || e.find("rank 3") != std::string::npos;
  CHECK(named);
}

}  // namespace parameter_server_tcp_test

#endif  // ECOPT_TEST_HAVE_TCP
