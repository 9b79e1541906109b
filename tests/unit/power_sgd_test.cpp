// PowerSGD (Vogels, Karimireddy, Jaggi 2019, arXiv:1905.13727): exact recovery
// of low-rank matrices, the warm start, the shape and its bits, corrupt
// payloads, the distributed round against a serial reference on 1..4 threads,
// no allocation after warm-up, and a solver run with error feedback.
#include <doctest/doctest.h>

#include <Eigen/Dense>
#include <algorithm>
#include <cmath>
#include <cstddef>
#include <cstdint>
#include <cstring>
#include <limits>
#include <span>
#include <string>
#include <type_traits>
#include <utility>
#include <vector>

#include "contracts/contract_examples.hpp"
#include "ecopt/compensators/error_feedback.hpp"
#include "ecopt/compensators/no_compensation.hpp"
#include "ecopt/compressors/no_compression.hpp"
#include "ecopt/compressors/power_sgd.hpp"
#include "ecopt/optimizers/heavy_ball.hpp"
#include "ecopt/optimizers/sgd.hpp"
#include "ecopt/problems/softmax_regression.hpp"
#include "ecopt/solver.hpp"
#include "ecopt/transports/thread_transport.hpp"
#include "support/alloc_counter.hpp"

// Everything of this file lives in its own namespace, so that test files can share a
// translation unit (the unity build in tests/CMakeLists.txt).
namespace power_sgd_test {

namespace {

using ecopt::power_sgd;
using ecopt::round_context;
using ecopt::test::harness;
using ecopt::test::random_vector;

static_assert(ecopt::AggregatingCompressor<power_sgd, float, ecopt::thread_transport>);
static_assert(ecopt::AggregatingCompressor<power_sgd, double, ecopt::thread_transport>);
static_assert(ecopt::FixedSizePayload<power_sgd>);
// Biased and deterministic, with an error that depends on the warm start: no
// declared omega or delta, and no one-allreduce summable form.
static_assert(!ecopt::UnbiasedCompressor<power_sgd>);
static_assert(!ecopt::ContractiveCompressor<power_sgd>);
static_assert(!ecopt::SummableCompressor<power_sgd, double>);

round_context ctx_at(std::uint64_t round, int rank = 0, int world = 1, std::uint64_t seed = 17) {
  return round_context{.seed = seed, .round = round, .rank = rank, .world = world, .lr = 0.1};
}

Eigen::MatrixXd gaussian(Eigen::Index rows, Eigen::Index cols, std::uint64_t seed) {
  auto rng = ecopt::counter_rng::stream(seed, ecopt::stream_purpose::test, 3, 0);
  Eigen::MatrixXd m(rows, cols);
  for (Eigen::Index i = 0; i < m.size(); ++i) m.data()[i] = rng.normal();
  return m;
}

/// A rows x cols matrix with singular values decay^k and random singular vectors.
Eigen::MatrixXd with_spectrum(Eigen::Index rows, Eigen::Index cols, double decay,
                              std::uint64_t seed) {
  const Eigen::Index n = std::min(rows, cols);
  const Eigen::MatrixXd u =
      Eigen::HouseholderQR<Eigen::MatrixXd>(gaussian(rows, n, seed)).householderQ() *
      Eigen::MatrixXd::Identity(rows, n);
  const Eigen::MatrixXd v =
      Eigen::HouseholderQR<Eigen::MatrixXd>(gaussian(cols, n, seed + 1)).householderQ() *
      Eigen::MatrixXd::Identity(cols, n);
  Eigen::VectorXd s(n);
  for (Eigen::Index k = 0; k < n; ++k) s[k] = std::pow(decay, static_cast<double>(k));
  return u * s.asDiagonal() * v.transpose();
}

template <class T>
std::vector<T> as_vector(const Eigen::MatrixXd& m) {
  std::vector<T> v(static_cast<std::size_t>(m.size()));
  for (Eigen::Index i = 0; i < m.size(); ++i)
    v[static_cast<std::size_t>(i)] = static_cast<T>(m.data()[i]);
  return v;
}

template <class T>
double relative_error(const std::vector<T>& a, const std::vector<T>& b) {
  double num = 0;
  double den = 0;
  for (std::size_t i = 0; i < a.size(); ++i) {
    const double e = static_cast<double>(a[i]) - static_cast<double>(b[i]);
    num += e * e;
    den += static_cast<double>(b[i]) * static_cast<double>(b[i]);
  }
  return std::sqrt(num / den);
}

/// The best rank-r approximation error of m, relative to ||m|| (Eckart-Young).
double best_rank_error(const Eigen::MatrixXd& m, Eigen::Index r) {
  const Eigen::JacobiSVD<Eigen::MatrixXd> svd(m);
  const Eigen::VectorXd s = svd.singularValues();
  return std::sqrt(s.tail(s.size() - r).squaredNorm() / s.squaredNorm());
}

Eigen::MatrixXd unit_columns(Eigen::MatrixXd q) {
  for (Eigen::Index k = 0; k < q.cols(); ++k) {
    if (q.col(k).norm() > 0) q.col(k).normalize();
  }
  return q;
}

/// Float32 rounding, as the wire does.
Eigen::MatrixXd to_float(const Eigen::MatrixXd& m) { return m.cast<float>().cast<double>(); }

/// Each rank's result of one distributed round.
struct rank_round {
  std::vector<double> sum;
  std::vector<double> own;
  std::uint64_t bits = 0;
};

/// The distributed PowerSGD round done serially in double, with the wire's
/// float32 rounding of each rank's P_i, Q_i and remainder, and Householder QR
/// for the orthonormalisation (its column signs may differ from Gram-Schmidt's;
/// P^ Q^T does not see them). inputs[round][rank]; returns [round][rank].
std::vector<std::vector<rank_round>> serial_reference(
    const power_sgd& c, std::size_t d, const std::vector<std::vector<std::vector<double>>>& inputs,
    std::uint64_t seed) {
  const ecopt::power_sgd_shape sh = c.shape(d);
  const auto rows = static_cast<Eigen::Index>(sh.rows);
  const auto cols = static_cast<Eigen::Index>(sh.cols);
  const auto r = static_cast<Eigen::Index>(sh.rank);
  const std::size_t body = sh.rows * sh.cols;
  Eigen::MatrixXd q(cols, r);
  power_sgd::draw_q(std::span<double>(q.data(), static_cast<std::size_t>(q.size())), sh.cols,
                    ctx_at(0, 0, 1, seed));
  std::vector<std::vector<rank_round>> out;
  for (const auto& round_inputs : inputs) {
    const auto world = static_cast<int>(round_inputs.size());
    std::vector<Eigen::Map<const Eigen::MatrixXd>> m;
    for (const auto& x : round_inputs) m.emplace_back(x.data(), rows, cols);
    Eigen::MatrixXd start = q;
    Eigen::MatrixXd p_hat;
    Eigen::MatrixXd q_sum;
    for (std::size_t it = 0; it < c.iterations; ++it) {
      Eigen::MatrixXd p = Eigen::MatrixXd::Zero(rows, r);
      for (const auto& mi : m) p += to_float(mi * start);
      p_hat = Eigen::HouseholderQR<Eigen::MatrixXd>(p).householderQ() *
              Eigen::MatrixXd::Identity(rows, r);
      q_sum = Eigen::MatrixXd::Zero(cols, r);
      for (const auto& mi : m) q_sum += to_float(mi.transpose() * p_hat);
      start = unit_columns(q_sum);
    }
    q = start;
    const Eigen::MatrixXd approx = p_hat * q_sum.transpose();
    std::vector<rank_round> ranks(static_cast<std::size_t>(world));
    std::vector<double> sum(d, 0.0);
    for (std::size_t j = 0; j < body; ++j) sum[j] = approx.data()[j];
    for (const auto& x : round_inputs) {
      for (std::size_t j = body; j < d; ++j) sum[j] += static_cast<float>(x[j]);
    }
    for (int w = 0; w < world; ++w) {
      auto& rr = ranks[static_cast<std::size_t>(w)];
      rr.sum = sum;
      rr.own.assign(d, 0.0);
      for (std::size_t j = 0; j < body; ++j) rr.own[j] = approx.data()[j] / world;
      for (std::size_t j = body; j < d; ++j) {
        rr.own[j] = static_cast<float>(round_inputs[static_cast<std::size_t>(w)][j]);
      }
      rr.bits = c.aggregate_bits(d);
    }
    out.push_back(std::move(ranks));
  }
  return out;
}

/// The same rounds through power_sgd::aggregate on `world` threads; returns [round][rank].
template <class T>
std::vector<std::vector<rank_round>> threaded(
    const power_sgd& c, std::size_t d, const std::vector<std::vector<std::vector<double>>>& inputs,
    std::uint64_t seed) {
  const int world = static_cast<int>(inputs.front().size());
  auto per_rank = ecopt::run_threads(world, [&](ecopt::thread_transport& t) {
    auto state = c.make_state<T>(d);
    ecopt::collective_workspace ws;
    std::vector<rank_round> rounds;
    std::vector<T> x(d), own(d), sum(d);
    for (std::size_t round = 0; round < inputs.size(); ++round) {
      const auto& src = inputs[round][static_cast<std::size_t>(t.rank())];
      for (std::size_t j = 0; j < d; ++j) x[j] = static_cast<T>(src[j]);
      std::fill(own.begin(), own.end(), T(0));
      std::fill(sum.begin(), sum.end(), T(0));
      rank_round rr;
      rr.bits = c.aggregate(t, std::span<const T>(x), state, std::span<T>(own), std::span<T>(sum),
                            ws, ctx_at(round, t.rank(), world, seed));
      rr.sum.assign(sum.begin(), sum.end());
      rr.own.assign(own.begin(), own.end());
      rounds.push_back(std::move(rr));
    }
    return rounds;
  });
  std::vector<std::vector<rank_round>> out(inputs.size());
  for (std::size_t round = 0; round < inputs.size(); ++round) {
    for (auto& rank_rounds : per_rank) out[round].push_back(rank_rounds[round]);
  }
  return out;
}

double max_abs_difference(const std::vector<double>& a, const std::vector<double>& b) {
  double m = 0;
  for (std::size_t i = 0; i < a.size(); ++i) m = std::max(m, std::fabs(a[i] - b[i]));
  return m;
}

double max_abs(const std::vector<double>& a) {
  double m = 0;
  for (const double v : a) m = std::max(m, std::fabs(v));
  return m;
}

/// A problem whose "stochastic" gradient is the full gradient of its shard, so
/// that a run's only noise is the compression.
struct full_batch_softmax {
  using scalar_type = double;
  ecopt::softmax_regression<double> inner;
  std::size_t dim() const { return inner.dim(); }
  double loss(Eigen::Ref<const Eigen::VectorXd> x) { return inner.loss(x); }
  void gradient(Eigen::Ref<const Eigen::VectorXd> x, Eigen::Ref<Eigen::VectorXd> g) {
    inner.gradient(x, g);
  }
  void stochastic_gradient(Eigen::Ref<const Eigen::VectorXd> x, Eigen::Ref<Eigen::VectorXd> g,
                           ecopt::counter_rng&) {
    inner.gradient(x, g);
  }
};

/// Shards of a 10-class problem with 30 features, drawn from one linear model.
struct softmax_data {
  static constexpr int classes = 10;
  static constexpr Eigen::Index features = 30;
  static constexpr Eigen::Index per_worker = 150;
  std::vector<Eigen::MatrixXd> a;
  std::vector<Eigen::VectorXi> y;
  explicit softmax_data(int world) {
    const Eigen::MatrixXd w_true = 2.0 * gaussian(classes, features, 1234);
    for (int w = 0; w < world; ++w) {
      Eigen::MatrixXd aw = gaussian(features, per_worker, 2000 + static_cast<std::uint64_t>(w));
      const Eigen::MatrixXd noise =
          gaussian(classes, per_worker, 3000 + static_cast<std::uint64_t>(w));
      const Eigen::MatrixXd logits = w_true * aw + noise;
      Eigen::VectorXi yw(per_worker);
      for (Eigen::Index i = 0; i < per_worker; ++i) logits.col(i).maxCoeff(&yw[i]);
      a.push_back(std::move(aw));
      y.push_back(std::move(yw));
    }
  }
};

template <class Solver>
std::vector<Eigen::VectorXd> run_softmax(const Solver& s, const softmax_data& data, int world,
                                         std::uint64_t steps) {
  return ecopt::run_threads(world, [&](ecopt::thread_transport& t) {
    const auto w = static_cast<std::size_t>(t.rank());
    full_batch_softmax p{ecopt::softmax_regression<double>(data.a[w], data.y[w],
                                                           softmax_data::classes, {.l2 = 0.02})};
    Eigen::VectorXd x = Eigen::VectorXd::Zero(static_cast<Eigen::Index>(p.dim()));
    s.run(t, p, x, {.steps = steps});
    return x;
  });
}

}  // namespace

TEST_CASE("power_sgd: shape, bits and parameter checks") {
  const power_sgd c{};
  // d = 1000, r = 2: rows 27 x cols 37 + 1 costs 2 (27 + 37) + 1 = 129 floats,
  // fewer than the square-most 31 x 32 + 8 (134) or the exact 25 x 40 (130).
  const ecopt::power_sgd_shape s1000 = c.shape(1000);
  CHECK(s1000.rows == 27);
  CHECK(s1000.cols == 37);
  CHECK(s1000.rank == 2);
  CHECK(s1000.remainder == 1);
  CHECK(c.bits(1000) == 32 * 129);
  CHECK(c.max_bits(1000) == c.bits(1000));
  CHECK(c.aggregate_bits(1000) == 32 * 129);
  CHECK(power_sgd{.iterations = 3}.aggregate_bits(1000) == 32 * (3 * 128 + 1));
  // A perfect square.
  const auto s4096 = c.shape(4096);
  CHECK((s4096.rows == 64 && s4096.cols == 64 && s4096.remainder == 0));
  CHECK(c.bits(std::size_t{1} << 24) == 32 * 2 * (4096 + 4096));
  // Given rows: cols = floor(d / rows), the rest dense.
  const auto given = power_sgd{.rank = 3, .rows = 24}.shape(437);
  CHECK((given.rows == 24 && given.cols == 18 && given.rank == 3 && given.remainder == 5));
  CHECK(power_sgd{.rank = 3, .rows = 24}.bits(437) == 32 * (3 * 42 + 5));
  // No saving: the whole vector travels dense.
  for (const std::size_t d : {std::size_t{1}, std::size_t{2}, std::size_t{7}, std::size_t{15}}) {
    CAPTURE(d);
    CHECK(c.shape(d).dense());
    CHECK(c.bits(d) == 32 * d);
  }
  CHECK(power_sgd{.rank = 4, .rows = 4}.shape(400).dense());  // r >= rows
  CHECK(power_sgd{.rows = 1}.shape(400).dense());
  CHECK(c.shape(16).dense());        // 4 x 4 would cost 2 (4 + 4) = 16 floats: no saving
  CHECK_FALSE(c.shape(25).dense());  // 5 x 5 costs 20 < 25
  CHECK(c.bits(25) == 32 * 20);

  CHECK_THROWS_AS((void)power_sgd{.rows = 11}.shape(10), ecopt::invalid_argument);
  CHECK_THROWS_AS((void)power_sgd{.rows = 11}.make_state<float>(10), ecopt::invalid_argument);
  auto message = [](const power_sgd& p) {
    try {
      p.validate();
    } catch (const ecopt::invalid_argument& e) {
      return std::string(e.what());
    }
    return std::string();
  };
  CHECK(message(power_sgd{.rank = 0}).find("rank") != std::string::npos);
  CHECK(message(power_sgd{.iterations = 0}).find("iterations") != std::string::npos);
  CHECK(message(power_sgd{.iterations = 65}).find("iterations") != std::string::npos);
  CHECK(message(power_sgd{}).empty());
}

TEST_CASE_TEMPLATE("power_sgd recovers an exactly low-rank matrix to float precision", T, float,
                   double) {
  // M = A B^T of rank 2 (40 x 30) plus a 3-entry remainder: P = M Q spans M's
  // column space, so P^ P^^T M = M after one power iteration from any Q.
  const Eigen::MatrixXd m = gaussian(40, 2, 5) * gaussian(30, 2, 6).transpose();
  std::vector<T> x = as_vector<T>(m);
  x.push_back(T(0.5));
  x.push_back(T(-1.25));
  x.push_back(T(3));
  const std::size_t d = x.size();
  for (const std::size_t r : {std::size_t{2}, std::size_t{3}}) {
    CAPTURE(r);
    // Rank 3 on a rank-2 matrix: the third column of P is in the span of the
    // first two, so it is sent as zero (and its Q column is drawn afresh next round).
    const power_sgd c{.rank = r, .rows = 40};
    harness<power_sgd, T> h(c, d);
    for (std::uint64_t round = 0; round < 3; ++round) {
      const auto out = h.apply(x, ctx_at(round));
      CHECK(h.bits == 32 * (r * 70 + 3));
      CHECK(relative_error(out, x) < 1e-6);
      CHECK(out[d - 3] == T(0.5));
      CHECK(out[d - 1] == T(3));
    }
    if (r == 3) {
      // The payload's third P column (entries 80..119) is zero.
      std::vector<T> p3(h.state.p.begin() + 80, h.state.p.begin() + 120);
      CHECK(std::all_of(p3.begin(), p3.end(), [](T v) { return v == T(0); }));
    }
  }
}

TEST_CASE("power_sgd: the warm start drives the error to the best rank-r error") {
  // A fixed 30 x 20 matrix with singular values 0.7^k: each round is one more
  // step of subspace iteration, so the captured energy never drops and the
  // error approaches the Eckart-Young optimum; without the warm start every
  // round starts from fresh random vectors and stays far from it.
  const Eigen::MatrixXd m = with_spectrum(30, 20, 0.7, 8);
  const auto x = as_vector<double>(m);
  const double best = best_rank_error(m, 2);
  const power_sgd warm{.rank = 2, .rows = 30};
  const power_sgd cold{.rank = 2, .rows = 30, .warm_start = false};
  harness<power_sgd, double> hw(warm, x.size());
  harness<power_sgd, double> hc(cold, x.size());
  std::vector<double> warm_errors;
  double cold_min = 1e9;
  for (std::uint64_t round = 0; round < 30; ++round) {
    warm_errors.push_back(relative_error(hw.apply(x, ctx_at(round)), x));
    cold_min = std::min(cold_min, relative_error(hc.apply(x, ctx_at(round)), x));
  }
  MESSAGE("best rank-2 error " << best << ", warm start: round 0 " << warm_errors.front()
                               << ", round 29 " << warm_errors.back() << "; fresh Q at best "
                               << cold_min);
  for (std::size_t t = 1; t < warm_errors.size(); ++t) {
    CAPTURE(t);
    CHECK(warm_errors[t] <= warm_errors[t - 1] * (1 + 1e-9));
  }
  CHECK(warm_errors.front() > 1.2 * best);
  CHECK(warm_errors.back() < best * (1 + 1e-6));
  CHECK(cold_min > 1.05 * best);

  // More power iterations per round get there sooner.
  harness<power_sgd, double> h3(power_sgd{.rank = 2, .rows = 30, .iterations = 3}, x.size());
  CHECK(relative_error(h3.apply(x, ctx_at(0)), x) < warm_errors[1]);
}

TEST_CASE("power_sgd: payloads repeat per (seed, round); a gap restarts from the shared draw") {
  const auto x = random_vector<double>(600, 3);
  const power_sgd c{};
  harness<power_sgd, double> a(c, 600);
  harness<power_sgd, double> b(c, 600);
  for (std::uint64_t round = 0; round < 3; ++round) a.encode(x, ctx_at(round));
  a.encode(x, ctx_at(7));
  b.encode(x, ctx_at(7));
  CHECK(a.payload == b.payload);  // both drew Q from (seed, 7)
  const auto first = a.payload;
  a.encode(x, ctx_at(7));
  CHECK(a.payload == first);  // re-encoding a round starts from the same Q
  a.encode(x, ctx_at(7, 0, 1, 18));
  CHECK(a.payload != first);  // another seed, another Q
  // The shared draw is what a fresh state starts from.
  std::vector<double> q(a.state.q_start.size());
  power_sgd::draw_q(std::span<double>(q), a.state.shape.cols, ctx_at(7, 0, 1, 18));
  CHECK(q == a.state.q_start);
}

TEST_CASE_TEMPLATE("power_sgd: corrupt payloads are rejected before the output changes", T, float,
                   double) {
  const power_sgd c{.rank = 2, .rows = 20};
  constexpr std::size_t d = 20 * 15 + 4;
  harness<power_sgd, T> h(c, d);
  const auto ctx = ctx_at(0);
  h.encode(random_vector<T>(d, 4), ctx);
  const std::vector<std::byte> good = h.payload;
  REQUIRE(good.size() == 4 * (2 * 35 + 4));
  const std::vector<T> start = random_vector<T>(d, 5);
  std::vector<T> out = start;
  REQUIRE_NOTHROW(h.decode_add(good, out, T(1), ctx));

  auto set_float = [](std::vector<std::byte>& p, std::size_t index, float v) {
    std::memcpy(p.data() + 4 * index, &v, 4);
  };
  auto get_float = [](const std::vector<std::byte>& p, std::size_t index) {
    float v;
    std::memcpy(&v, p.data() + 4 * index, 4);
    return v;
  };
  auto rejects = [&](const std::vector<std::byte>& p, T scale, const char* what) {
    out = start;
    std::string message;
    try {
      h.decode_add(p, out, scale, ctx);
    } catch (const ecopt::decode_error& e) {
      message = e.what();
    }
    CHECK_MESSAGE(message.find(what) != std::string::npos, message);
    CHECK(out == start);
  };

  std::vector<std::byte> p(good.begin(), good.end() - 1);
  rejects(p, T(1), "power_sgd");  // truncated
  p = good;
  p.insert(p.end(), 4, std::byte{0});
  rejects(p, T(1), "unexpected bits");  // a float too many
  p = good;
  for (std::size_t i = 0; i < 20; ++i) set_float(p, i, 2 * get_float(good, i));
  rejects(p, T(1), "squared norm");  // P's first column is not a unit vector
  p = good;
  for (std::size_t i = 0; i < 20; ++i) set_float(p, 20 + i, get_float(good, i));
  rejects(p, T(1), "not orthogonal");  // P's columns are equal
  p = good;
  set_float(p, 40 + 3, std::numeric_limits<float>::quiet_NaN());
  rejects(p, T(1), "Q");
  p = good;
  set_float(p, 40 + 30 + 2, std::numeric_limits<float>::infinity());
  rejects(p, T(1), "remainder");

  // A zero column of P is a valid payload (a degenerate direction).
  p = good;
  for (std::size_t i = 0; i < 20; ++i) set_float(p, 20 + i, 0.0f);
  out = start;
  CHECK_NOTHROW(h.decode_add(p, out, T(1), ctx));

  // Q values whose product with P would overflow T are refused.
  p = good;
  set_float(p, 40, 3e38f);
  set_float(p, 40 + 15, 3e38f);
  if constexpr (std::is_same_v<T, float>) {
    rejects(p, T(1), "overflow");
  } else {
    out = start;
    CHECK_NOTHROW(h.decode_add(p, out, T(1), ctx));
    CHECK(std::all_of(out.begin(), out.end(), [](T v) { return std::isfinite(v); }));
  }
}

TEST_CASE_TEMPLATE("power_sgd: a non-finite input is a numeric_error", T, float, double) {
  const power_sgd c{};
  REQUIRE(c.shape(101).remainder == 1);  // 10 x 10 + 1
  harness<power_sgd, T> h(c, 101);
  auto x = random_vector<T>(101, 1);
  x[17] = std::numeric_limits<T>::quiet_NaN();  // in the matrix
  CHECK_THROWS_AS(h.encode(x, ctx_at(0)), ecopt::numeric_error);
  x[17] = T(0);
  x[100] = std::numeric_limits<T>::infinity();  // in the remainder
  CHECK_THROWS_AS(h.encode(x, ctx_at(1)), ecopt::numeric_error);
  x[100] = T(0);
  if constexpr (std::is_same_v<T, double>) {
    x[5] = 1e300;  // finite, but M Q overflows float32 on the way
    CHECK_THROWS_AS(h.encode(x, ctx_at(2)), ecopt::numeric_error);
  }
  harness<power_sgd, T> dense(c, 7);
  auto y = random_vector<T>(7, 2);
  y[3] = std::numeric_limits<T>::infinity();
  CHECK_THROWS_AS(dense.encode(y, ctx_at(0)), ecopt::numeric_error);
}

TEST_CASE_TEMPLATE("power_sgd aggregate on 1..4 threads matches the serial computation", T, float,
                   double) {
  struct config {
    power_sgd c;
    std::size_t d;
  };
  const std::vector<config> configs{
      {power_sgd{}, 1000},                              // 27 x 37 + 1, rank 2
      {power_sgd{.rank = 3, .rows = 24}, 24 * 18 + 5},  // given rows, rank 3
      {power_sgd{.rank = 2, .iterations = 2}, 600},     // two power iterations
      {power_sgd{}, 7},                                 // dense
  };
  // The ring sums float32 values in another order than the reference; what
  // differs is float32 rounding of the summed P and Q, amplified a little by
  // the orthonormalisation.
  const double tolerance = 1e-5;
  for (const auto& cfg : configs) {
    const power_sgd& c = cfg.c;
    const std::size_t d = cfg.d;
    for (int world = 1; world <= 4; ++world) {
      CAPTURE(d);
      CAPTURE(c.rank);
      CAPTURE(c.iterations);
      CAPTURE(world);
      constexpr std::size_t rounds = 4;
      std::vector<std::vector<std::vector<double>>> inputs(rounds);
      for (std::size_t round = 0; round < rounds; ++round) {
        for (int w = 0; w < world; ++w) {
          auto x = random_vector<double>(d, 100 * round + static_cast<std::uint64_t>(w));
          for (auto& v : x) v = static_cast<T>(v);  // representable in T
          inputs[round].push_back(std::move(x));
        }
      }
      const std::uint64_t seed = 23;
      const auto got = threaded<T>(c, d, inputs, seed);
      const auto want = c.shape(d).dense() ? std::vector<std::vector<rank_round>>{}
                                           : serial_reference(c, d, inputs, seed);
      for (std::size_t round = 0; round < rounds; ++round) {
        CAPTURE(round);
        for (int w = 0; w < world; ++w) {
          const auto& g = got[round][static_cast<std::size_t>(w)];
          CHECK(g.sum == got[round][0].sum);  // bitwise identical on every rank
          CHECK(g.bits == c.aggregate_bits(d));
          if (c.shape(d).dense()) {
            std::vector<double> sum(d, 0.0);
            for (const auto& x : inputs[round]) {
              for (std::size_t j = 0; j < d; ++j) sum[j] += static_cast<float>(x[j]);
            }
            CHECK(max_abs_difference(g.sum, sum) <= 1e-6 * max_abs(sum));
            for (std::size_t j = 0; j < d; ++j) {
              CHECK(g.own[j] == static_cast<float>(inputs[round][static_cast<std::size_t>(w)][j]));
            }
            continue;
          }
          const auto& e = want[round][static_cast<std::size_t>(w)];
          CHECK(max_abs_difference(g.sum, e.sum) <= tolerance * max_abs(e.sum));
          CHECK(max_abs_difference(g.own, e.own) <= tolerance * max_abs(e.sum));
        }
        // The ranks' shares add up to the aggregate.
        std::vector<double> owns(d, 0.0);
        for (const auto& g : got[round]) {
          for (std::size_t j = 0; j < d; ++j) owns[j] += g.own[j];
        }
        CHECK(max_abs_difference(owns, got[round][0].sum) <= 1e-5 * max_abs(owns));
      }
    }
  }
}

TEST_CASE("power_sgd aggregate: a non-finite input on one rank fails every rank alike") {
  const power_sgd c{};
  constexpr std::size_t d = 500;
  auto failures = ecopt::run_threads(3, [&](ecopt::thread_transport& t) {
    auto state = c.make_state<double>(d);
    ecopt::collective_workspace ws;
    auto x = random_vector<double>(d, static_cast<std::uint64_t>(t.rank()));
    if (t.rank() == 1) x[42] = std::numeric_limits<double>::infinity();
    std::vector<double> own(d, 0.0), sum(d, 0.0);
    try {
      c.aggregate(t, std::span<const double>(x), state, std::span<double>(own),
                  std::span<double>(sum), ws, ctx_at(0, t.rank(), 3));
    } catch (const ecopt::numeric_error&) {
      return 1;
    }
    return 0;
  });
  for (const int f : failures) CHECK(f == 1);
}

TEST_CASE("power_sgd: no allocation after warm-up, standalone and over threads") {
  for (const std::size_t d : {std::size_t{7}, std::size_t{1000}, std::size_t{4097}}) {
    CAPTURE(d);
    const power_sgd c{.rank = 4, .iterations = 2};
    harness<power_sgd, float> h(c, d);
    const auto x = random_vector<float>(d, 1);
    std::vector<float> out(d, 0.0f);
    h.encode(x, ctx_at(0));
    h.decode_add(h.payload, out, 1.0f, ctx_at(0));
    ecopt::test::allocation_scope scope;
    for (std::uint64_t round = 1; round < 6; ++round) {
      h.encode(x, ctx_at(round));
      h.decode_add(h.payload, out, -0.5f, ctx_at(round));
    }
    CHECK(scope.count() == 0);

    auto counts = ecopt::run_threads(3, [&](ecopt::thread_transport& t) {
      auto state = c.make_state<double>(d);
      ecopt::collective_workspace ws;
      const auto xr = random_vector<double>(d, 10 + static_cast<std::uint64_t>(t.rank()));
      std::vector<double> own(d, 0.0), sum(d, 0.0);
      std::uint64_t allocations = 0;
      for (std::uint64_t round = 0; round < 16; ++round) {
        ecopt::test::allocation_scope s;
        c.aggregate(t, std::span<const double>(xr), state, std::span<double>(own),
                    std::span<double>(sum), ws, ctx_at(round, t.rank(), 3));
        if (round >= 6) allocations += s.count();
      }
      return allocations;
    });
    for (const auto n : counts) CHECK(n == 0);
  }
}

TEST_CASE("solver: power_sgd with error feedback converges on softmax regression") {
  // Parameter [W | b] is 10 x 31, sent as rank 2: 2 (10 + 31) = 82 floats of 310.
  // Full-batch gradients on each worker's shard; the optimum of the mean loss
  // comes from a long dense run.
  constexpr int world = 3;
  const softmax_data data(world);
  const power_sgd c{.rank = 2, .rows = softmax_data::classes};
  CHECK(c.bits(310) == 32 * 82);
  const auto optimum = run_softmax(
      ecopt::solver{ecopt::no_compression{}, ecopt::no_compensation{}, ecopt::sgd{.lr = 0.5}}, data,
      world, 6000)[0];
  const auto distance = [&](const Eigen::VectorXd& x) {
    return (x - optimum).norm() / optimum.norm();
  };
  const auto ef = run_softmax(
      ecopt::solver{c, ecopt::error_feedback{}, ecopt::heavy_ball{.lr = 0.2, .momentum = 0.5}},
      data, world, 1500);
  const auto ef_sgd = run_softmax(ecopt::solver{c, ecopt::error_feedback{}, ecopt::sgd{.lr = 0.4}},
                                  data, world, 1500);
  const auto no_ef = run_softmax(
      ecopt::solver{c, ecopt::no_compensation{}, ecopt::heavy_ball{.lr = 0.2, .momentum = 0.5}},
      data, world, 1500);
  MESSAGE("relative distance to the optimum: EF + heavy ball " << distance(ef[0]) << ", EF + sgd "
                                                               << distance(ef_sgd[0]) << ", no EF "
                                                               << distance(no_ef[0]));
  for (int w = 1; w < world; ++w) CHECK(ef[static_cast<std::size_t>(w)] == ef[0]);
  CHECK(distance(ef[0]) < 1e-3);
  CHECK(distance(ef_sgd[0]) < 1e-3);
  CHECK(distance(no_ef[0]) > 10 * distance(ef[0]));
}

TEST_CASE("solver: a power_sgd run reports exact payload bits") {
  constexpr int world = 2;
  const softmax_data data(world);
  const power_sgd c{.rank = 3, .rows = softmax_data::classes, .iterations = 2};
  constexpr std::uint64_t steps = 7;
  const ecopt::solver s{c, ecopt::error_feedback{}, ecopt::sgd{.lr = 0.1}};
  auto reports = ecopt::run_threads(world, [&](ecopt::thread_transport& t) {
    const auto w = static_cast<std::size_t>(t.rank());
    ecopt::softmax_regression<double> p(data.a[w], data.y[w], softmax_data::classes);
    Eigen::VectorXd x = Eigen::VectorXd::Zero(static_cast<Eigen::Index>(p.dim()));
    return s.run(t, p, x, {.steps = steps});
  });
  // 10 x 31: per round 2 iterations of 3 (10 + 31) floats each way.
  CHECK(c.aggregate_bits(310) == 32 * 2 * 3 * 41);
  for (const auto& r : reports) {
    CHECK(r.payload_bits == steps * c.aggregate_bits(310));
    CHECK(r.wire_bits > 0);
  }
}

}  // namespace power_sgd_test
