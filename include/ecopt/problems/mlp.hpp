#pragma once
// A multilayer perceptron with one hidden layer, for classification over one
// worker's shard; the library's small non-convex problem:
//   h_i = act(W1 a_i + b1),   z_i = W2 h_i + b2,
//   f(x) = 1/m sum_i [logsumexp(z_i) - (z_i)_{y_i}] + l2/2 (||W1||^2 + ||W2||^2),
// with act = ReLU or tanh, A d x m with one sample per column and labels y_i in
// [0, classes). The biases are not regularised.
//
// Parameter layout: x is the concatenation
//   W1  hidden x d, column-major      x[0, hidden d)
//   b1  hidden                        x[hidden d, hidden (d + 1))
//   W2  classes x hidden, column-major  x[hidden (d + 1), hidden (d + 1) + classes hidden)
//   b2  classes                       the last `classes` entries
// so dim() = hidden (d + 1) + classes (hidden + 1) (784-64-10: 50890). The
// offsets are also returned by layout(), and the blocks with their shapes by
// layers().
//
// Start from initial_point(seed), not from zero: at W1 = 0, W2 = 0 both weight
// gradients vanish (the hidden layer is constant and the output layer has no
// signal to send back), a saddle where only b2 learns.
//
// The products run through detail::gemm_accumulate (softmax_regression.hpp),
// which packs its blocks on the stack, and all scratch is made in the
// constructor: loss, gradient, stochastic_gradient and accuracy never touch
// the heap after construction.
#include <Eigen/Core>
#include <algorithm>
#include <cmath>
#include <cstddef>
#include <cstdint>
#include <span>
#include <string>
#include <type_traits>
#include <utility>
#include <vector>

#include "ecopt/counter_rng.hpp"
#include "ecopt/error.hpp"
#include "ecopt/parameter_layout.hpp"
#include "ecopt/problem.hpp"
#include "ecopt/problems/detail/softmax_cross_entropy.hpp"
#include "ecopt/problems/shard.hpp"
#include "ecopt/problems/softmax_regression.hpp"

namespace ecopt {

/// The hidden layer's nonlinearity.
enum class mlp_activation { relu, tanh };

struct mlp_options {
  std::size_t hidden = 64;                           ///< width of the hidden layer, >= 1
  mlp_activation activation = mlp_activation::relu;  ///< nonlinearity of the hidden layer
  double l2 = 0;                                     ///< ridge coefficient on W1 and W2, >= 0
  std::size_t batch_size = 32;  ///< samples per stochastic gradient (drawn with replacement)

  void validate() const {
    if (hidden == 0 || hidden > (std::size_t{1} << 24)) {
      throw invalid_argument("mlp_options.hidden must be in [1, 2^24] (got " +
                             std::to_string(hidden) + ")");
    }
    if (activation != mlp_activation::relu && activation != mlp_activation::tanh) {
      throw invalid_argument("mlp_options.activation must be relu or tanh (got " +
                             std::to_string(static_cast<int>(activation)) + ")");
    }
    detail::validate_l2(l2, "mlp_options");
    detail::validate_batch_size(batch_size, "mlp_options");
  }
};

/// Where each block of parameters starts in x (see the layout above).
struct mlp_layout {
  std::size_t w1 = 0;   ///< hidden x d
  std::size_t b1 = 0;   ///< hidden
  std::size_t w2 = 0;   ///< classes x hidden
  std::size_t b2 = 0;   ///< classes
  std::size_t dim = 0;  ///< one past the end of b2
};

/// Keeps a view of the features (the caller keeps them alive) and a copy of
/// the m labels. x and the outputs must not alias each other.
template <class T = double>
class mlp {
 public:
  using scalar_type = T;
  /// Columns per chunk in the full-shard passes (bounds the scratch memory).
  static constexpr Eigen::Index chunk_columns = 512;

  template <detail::matrix_view_source<T> F>
  mlp(F&& features, std::span<const int> labels, int classes, mlp_options options = {})
      : a_(detail::make_view<T>(features, "mlp")),
        labels_(labels.begin(), labels.end()),
        classes_(classes),
        options_(options) {
    options_.validate();
    detail::check_classes(classes, "mlp");
    detail::check_samples(a_.cols(), "mlp");
    if (a_.rows() == 0) throw invalid_argument("mlp: the features have d = 0 rows");
    if (labels.size() != samples()) {
      throw invalid_argument(
          "mlp: labels has size " + std::to_string(labels.size()) +
          ", expected the number of samples (feature columns) = " + std::to_string(samples()));
    }
    detail::check_class_labels(labels, classes, "mlp");
    const auto h = static_cast<Eigen::Index>(options_.hidden);
    const Eigen::Index chunk = std::min(chunk_columns, a_.cols());
    hidden_.resize(h, chunk);
    logits_.resize(classes_, chunk);
    back_.resize(h, chunk);
    const auto batch = static_cast<Eigen::Index>(options_.batch_size);
    batch_x_.resize(a_.rows(), batch);
    batch_hidden_.resize(h, batch);
    batch_logits_.resize(classes_, batch);
    batch_back_.resize(h, batch);
    batch_labels_.resize(options_.batch_size);
  }

  template <detail::matrix_view_source<T> F>
  mlp(F&& features, const Eigen::Ref<const Eigen::VectorXi>& labels, int classes,
      mlp_options options = {})
      : mlp(std::forward<F>(features),
            std::span<const int>(labels.data(), static_cast<std::size_t>(labels.size())), classes,
            options) {}

  [[nodiscard]] mlp_layout layout() const noexcept {
    const std::size_t d = features_dim();
    const std::size_t h = options_.hidden;
    const auto c = static_cast<std::size_t>(classes_);
    return {0, h * d, h * (d + 1), h * (d + 1) + c * h, h * (d + 1) + c * (h + 1)};
  }
  /// The layers as named blocks (W1, b1, W2, b2; weights column-major), for
  /// compressors that work layer by layer (per_block.hpp).
  [[nodiscard]] parameter_layout layers() const {
    const mlp_layout at = layout();
    const std::size_t h = options_.hidden;
    const auto c = static_cast<std::size_t>(classes_);
    parameter_layout out;
    out.add({.name = "W1", .offset = at.w1, .rows = h, .cols = features_dim()})
        .add({.name = "b1", .offset = at.b1, .rows = h})
        .add({.name = "W2", .offset = at.w2, .rows = c, .cols = h})
        .add({.name = "b2", .offset = at.b2, .rows = c});
    return out;
  }
  [[nodiscard]] std::size_t dim() const noexcept { return layout().dim; }
  [[nodiscard]] int classes() const noexcept { return classes_; }
  [[nodiscard]] std::size_t hidden() const noexcept { return options_.hidden; }
  /// d, the number of features per sample.
  [[nodiscard]] std::size_t features_dim() const noexcept {
    return static_cast<std::size_t>(a_.rows());
  }
  [[nodiscard]] std::size_t samples() const noexcept { return static_cast<std::size_t>(a_.cols()); }
  [[nodiscard]] const mlp_options& options() const noexcept { return options_; }

  /// A random starting point: W1 with He scaling, N(0, 2/d), for ReLU (it
  /// keeps the activations' second moment through the layer; He, Zhang, Ren,
  /// Sun 2015, arXiv:1502.01852), or Glorot scaling, N(0, 2/(d + hidden)), for
  /// tanh (Glorot, Bengio 2010); W2 with Glorot scaling N(0, 2/(hidden +
  /// classes)); zero biases. The draws come from counter_rng::stream(seed,
  /// algorithm, 0, 0), so the same seed gives the same point on every rank.
  void initial_point(std::uint64_t seed, Eigen::Ref<vector_t<T>> x) const {
    detail::check_size(x, dim(), "mlp::initial_point", "x");
    const mlp_layout at = layout();
    const auto d = static_cast<double>(features_dim());
    const auto h = static_cast<double>(options_.hidden);
    const auto c = static_cast<double>(classes_);
    const double first_scale =
        options_.activation == mlp_activation::relu ? std::sqrt(2.0 / d) : std::sqrt(2.0 / (d + h));
    const double second_scale = std::sqrt(2.0 / (h + c));
    counter_rng rng = counter_rng::stream(seed, stream_purpose::algorithm, 0, 0);
    auto fill = [&](std::size_t begin, std::size_t end, double scale) {
      for (std::size_t j = begin; j < end; ++j) {
        x[static_cast<Eigen::Index>(j)] = static_cast<T>(scale * rng.normal());
      }
    };
    fill(at.w1, at.b1, first_scale);
    fill(at.b1, at.w2, 0.0);
    fill(at.w2, at.b2, second_scale);
    fill(at.b2, at.dim, 0.0);
  }
  [[nodiscard]] vector_t<T> initial_point(std::uint64_t seed) const {
    vector_t<T> x(static_cast<Eigen::Index>(dim()));
    initial_point(seed, x);
    return x;
  }

  /// Mean cross-entropy over the shard + l2/2 (||W1||^2 + ||W2||^2).
  double loss(const Eigen::Ref<const vector_t<T>>& x) {
    detail::check_size(x, dim(), "mlp::loss", "x");
    double sum = 0;
    for (Eigen::Index s = 0; s < a_.cols(); s += logits_.cols()) {
      const Eigen::Index n = std::min(logits_.cols(), a_.cols() - s);
      auto h = hidden_.leftCols(n);
      auto z = logits_.leftCols(n);
      forward(x, a_.middleCols(s, n), h, z);
      for (Eigen::Index j = 0; j < n; ++j) {
        sum += detail::softmax_cross_entropy(z.col(j), labels_[static_cast<std::size_t>(s + j)]);
      }
    }
    return sum / static_cast<double>(samples()) + 0.5 * options_.l2 * weights_squared_norm(x);
  }

  /// The full gradient over the shard, by backpropagation in chunks.
  void gradient(const Eigen::Ref<const vector_t<T>>& x, Eigen::Ref<vector_t<T>> g) {
    detail::check_size(x, dim(), "mlp::gradient", "x");
    detail::check_size(g, dim(), "mlp::gradient", "g");
    g.setZero();
    for (Eigen::Index s = 0; s < a_.cols(); s += logits_.cols()) {
      const Eigen::Index n = std::min(logits_.cols(), a_.cols() - s);
      const auto labels = std::span<const int>(labels_).subspan(static_cast<std::size_t>(s),
                                                                static_cast<std::size_t>(n));
      accumulate_gradient(x, a_.middleCols(s, n), labels, hidden_.leftCols(n), logits_.leftCols(n),
                          back_.leftCols(n), g);
    }
    g *= T(1) / static_cast<T>(samples());
    add_l2(x, g);
  }

  /// Mean gradient over batch_size samples drawn uniformly with replacement
  /// (rng.below(m)), plus the l2 term: the sampled columns are gathered into a
  /// d x batch_size scratch matrix and the products are GEMMs. Does not allocate.
  void stochastic_gradient(const Eigen::Ref<const vector_t<T>>& x, Eigen::Ref<vector_t<T>> g,
                           counter_rng& rng) {
    detail::check_size(x, dim(), "mlp::stochastic_gradient", "x");
    detail::check_size(g, dim(), "mlp::stochastic_gradient", "g");
    const std::uint64_t m = samples();
    for (Eigen::Index k = 0; k < batch_x_.cols(); ++k) {
      const auto i = rng.below(m);
      batch_x_.col(k) = a_.col(static_cast<Eigen::Index>(i));
      batch_labels_[static_cast<std::size_t>(k)] = labels_[i];
    }
    g.setZero();
    accumulate_gradient(x, batch_x_, std::span<const int>(batch_labels_), batch_hidden_,
                        batch_logits_, batch_back_, g);
    g *= T(1) / static_cast<T>(batch_x_.cols());
    add_l2(x, g);
  }

  /// Fraction of this shard's samples whose largest logit is the label's.
  [[nodiscard]] double accuracy(const Eigen::Ref<const vector_t<T>>& x) {
    return accuracy(x, a_, std::span<const int>(labels_));
  }

  /// Fraction of the columns of `features` (d x n, e.g. a held-out test set)
  /// whose largest logit is the label's, on this problem's scratch: no
  /// allocation when `features` is a Matrix, block or Map.
  [[nodiscard]] double accuracy(
      const Eigen::Ref<const vector_t<T>>& x,
      const Eigen::Ref<const matrix_t<T>, 0, Eigen::OuterStride<>>& features,
      std::span<const int> labels) {
    detail::check_size(x, dim(), "mlp::accuracy", "x");
    if (static_cast<std::size_t>(features.rows()) != features_dim()) {
      throw invalid_argument("mlp::accuracy: the data has " + std::to_string(features.rows()) +
                             " features per sample, the problem " + std::to_string(features_dim()));
    }
    if (labels.size() != static_cast<std::size_t>(features.cols())) {
      throw invalid_argument("mlp::accuracy: " + std::to_string(features.cols()) + " samples but " +
                             std::to_string(labels.size()) + " labels");
    }
    if (features.cols() == 0) throw invalid_argument("mlp::accuracy: the data has no samples");
    std::size_t correct = 0;
    for (Eigen::Index s = 0; s < features.cols(); s += logits_.cols()) {
      const Eigen::Index n = std::min(logits_.cols(), features.cols() - s);
      auto h = hidden_.leftCols(n);
      auto z = logits_.leftCols(n);
      forward(x, features.middleCols(s, n), h, z);
      for (Eigen::Index j = 0; j < n; ++j) {
        Eigen::Index predicted = 0;
        z.col(j).maxCoeff(&predicted);
        correct += (predicted == labels[static_cast<std::size_t>(s + j)]) ? 1 : 0;
      }
    }
    return static_cast<double>(correct) / static_cast<double>(features.cols());
  }
  [[nodiscard]] double accuracy(
      const Eigen::Ref<const vector_t<T>>& x,
      const Eigen::Ref<const matrix_t<T>, 0, Eigen::OuterStride<>>& features,
      const Eigen::Ref<const Eigen::VectorXi>& labels) {
    return accuracy(x, features,
                    std::span<const int>(labels.data(), static_cast<std::size_t>(labels.size())));
  }

 private:
  using block_map = Eigen::Map<matrix_t<T>>;
  using const_block_map = Eigen::Map<const matrix_t<T>>;
  using const_segment = Eigen::Map<const vector_t<T>>;
  using segment = Eigen::Map<vector_t<T>>;

  [[nodiscard]] Eigen::Index rows_hidden() const noexcept {
    return static_cast<Eigen::Index>(options_.hidden);
  }
  [[nodiscard]] const_block_map w1(const Eigen::Ref<const vector_t<T>>& x) const {
    return const_block_map(x.data() + layout().w1, rows_hidden(), a_.rows());
  }
  [[nodiscard]] const_segment b1(const Eigen::Ref<const vector_t<T>>& x) const {
    return const_segment(x.data() + layout().b1, rows_hidden());
  }
  [[nodiscard]] const_block_map w2(const Eigen::Ref<const vector_t<T>>& x) const {
    return const_block_map(x.data() + layout().w2, classes_, rows_hidden());
  }
  [[nodiscard]] const_segment b2(const Eigen::Ref<const vector_t<T>>& x) const {
    return const_segment(x.data() + layout().b2, classes_);
  }

  /// h = act(W1 a + b1), z = W2 h + b2, for the columns of `a`.
  template <class Block, class H, class Z>
  void forward(const Eigen::Ref<const vector_t<T>>& x, const Block& a, H&& h, Z&& z) const {
    h.colwise() = b1(x);
    detail::gemm_accumulate(h, w1(x), a);
    if (options_.activation == mlp_activation::relu) {
      h = h.cwiseMax(T(0));
    } else {
      h = h.array().tanh().matrix();
    }
    z.colwise() = b2(x);
    detail::gemm_accumulate(z, w2(x), h);
  }

  /// g += the summed (not averaged) cross-entropy gradient over the columns
  /// of `a`, by backpropagation; h, z and back are scratch of a.cols() columns.
  template <class Block, class H, class Z, class B>
  void accumulate_gradient(const Eigen::Ref<const vector_t<T>>& x, const Block& a,
                           std::span<const int> labels, H&& h, Z&& z, B&& back,
                           Eigen::Ref<vector_t<T>>& g) const {
    const mlp_layout at = layout();
    forward(x, a, h, z);
    for (Eigen::Index j = 0; j < z.cols(); ++j) {
      detail::softmax_cross_entropy_gradient(z.col(j), labels[static_cast<std::size_t>(j)]);
    }
    // z now holds dloss/dlogits: the output layer's gradient, then the hidden layer's.
    detail::gemm_accumulate(block_map(g.data() + at.w2, classes_, rows_hidden()), z, h.transpose());
    segment(g.data() + at.b2, classes_) += z.rowwise().sum();
    back.setZero();
    detail::gemm_accumulate(back, w2(x).transpose(), z);
    if (options_.activation == mlp_activation::relu) {
      // ReLU'(u) = [u > 0], and u > 0 exactly when h = ReLU(u) > 0
      back.array() = (h.array() > T(0)).select(back.array(), T(0));
    } else {
      back.array() *= T(1) - h.array().square();  // tanh' = 1 - tanh^2
    }
    detail::gemm_accumulate(block_map(g.data() + at.w1, rows_hidden(), a_.rows()), back,
                            a.transpose());
    segment(g.data() + at.b1, rows_hidden()) += back.rowwise().sum();
  }

  [[nodiscard]] double weights_squared_norm(const Eigen::Ref<const vector_t<T>>& x) const {
    if (options_.l2 == 0.0) return 0.0;
    return static_cast<double>(w1(x).squaredNorm()) + static_cast<double>(w2(x).squaredNorm());
  }

  void add_l2(const Eigen::Ref<const vector_t<T>>& x, Eigen::Ref<vector_t<T>>& g) const {
    if (options_.l2 == 0.0) return;
    const mlp_layout at = layout();
    const auto l2 = static_cast<T>(options_.l2);
    const auto n1 = static_cast<Eigen::Index>(at.b1 - at.w1);
    const auto n2 = static_cast<Eigen::Index>(at.b2 - at.w2);
    g.segment(static_cast<Eigen::Index>(at.w1), n1) +=
        l2 * x.segment(static_cast<Eigen::Index>(at.w1), n1);
    g.segment(static_cast<Eigen::Index>(at.w2), n2) +=
        l2 * x.segment(static_cast<Eigen::Index>(at.w2), n2);
  }

  detail::const_matrix_view<T> a_;
  std::vector<int> labels_;
  int classes_;
  mlp_options options_;
  matrix_t<T> hidden_;        // hidden x min(m, chunk_columns)
  matrix_t<T> logits_;        // classes x min(m, chunk_columns)
  matrix_t<T> back_;          // hidden x min(m, chunk_columns): gradient in the hidden layer
  matrix_t<T> batch_x_;       // d x batch_size
  matrix_t<T> batch_hidden_;  // hidden x batch_size
  matrix_t<T> batch_logits_;  // classes x batch_size
  matrix_t<T> batch_back_;    // hidden x batch_size
  std::vector<int> batch_labels_;
};

template <class F, class L>
mlp(F&&, L&&, int, mlp_options = {}) -> mlp<typename std::remove_cvref_t<F>::Scalar>;

}  // namespace ecopt
