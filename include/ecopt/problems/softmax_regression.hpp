#pragma once
// Multinomial logistic (softmax) regression over one worker's shard:
//   f(W) = 1/m sum_i [logsumexp(W a_i + b) - (W a_i + b)_{y_i}] + l2/2 ||W||^2,
// A is d x m with one sample per column, labels y_i in [0, classes).
//
// Parameter layout: x holds the classes x (d + bias) matrix [W | b] flattened
// column-major, so dim() = classes * (d + bias), W = x[0, classes * d) viewed
// as classes x d and b = the last `classes` entries. The bias is not
// regularised.
//
// The products run through detail::gemm_accumulate, which tiles them so that
// Eigen's GEMM packs its blocks on the stack (each block at most
// EIGEN_STACK_ALLOCATION_LIMIT bytes): loss, gradient, stochastic_gradient and
// the member accuracy never touch the heap after construction.
#include <Eigen/Core>
#include <algorithm>
#include <cstddef>
#include <cstdint>
#include <limits>
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

namespace ecopt {

struct softmax_regression_options {
  double l2 = 0;                ///< ridge coefficient on W (not on the bias), >= 0
  std::size_t batch_size = 32;  ///< samples per stochastic gradient (drawn with replacement)
  bool bias = true;             ///< learn a bias per class (the last column of [W | b])

  void validate() const {
    detail::validate_l2(l2, "softmax_regression_options");
    detail::validate_batch_size(batch_size, "softmax_regression_options");
  }
};

namespace detail {

/// dst += lhs * rhs, as GEMMs on tiles small enough that every block Eigen
/// packs fits under EIGEN_STACK_ALLOCATION_LIMIT (so the product allocates
/// nothing on the heap, whatever the cache sizes). The tiles are large enough
/// that the speed matches one big GEMM.
template <class Dst, class Lhs, class Rhs>
void gemm_accumulate(Dst&& dst, const Lhs& lhs, const Rhs& rhs) {
  using scalar = typename std::remove_cvref_t<Dst>::Scalar;
  constexpr Eigen::Index depth_tile = 256;
  constexpr auto limit = static_cast<Eigen::Index>(EIGEN_STACK_ALLOCATION_LIMIT);
  constexpr Eigen::Index side_tile =
      std::max<Eigen::Index>(1, limit / (depth_tile * static_cast<Eigen::Index>(sizeof(scalar))));
  const Eigen::Index rows = dst.rows();
  const Eigen::Index cols = dst.cols();
  const Eigen::Index depth = lhs.cols();
  for (Eigen::Index j = 0; j < cols; j += side_tile) {
    const Eigen::Index nc = std::min(side_tile, cols - j);
    for (Eigen::Index i = 0; i < rows; i += side_tile) {
      const Eigen::Index nr = std::min(side_tile, rows - i);
      for (Eigen::Index k = 0; k < depth; k += depth_tile) {
        const Eigen::Index nk = std::min(depth_tile, depth - k);
        dst.block(i, j, nr, nc).noalias() += lhs.block(i, k, nr, nk) * rhs.block(k, j, nk, nc);
      }
    }
  }
}

inline void check_class_labels(std::span<const int> labels, int classes, const char* where) {
  for (std::size_t i = 0; i < labels.size(); ++i) {
    if (labels[i] < 0 || labels[i] >= classes) {
      throw invalid_argument(std::string(where) + ": sample " + std::to_string(i) + " has label " +
                             std::to_string(labels[i]) +
                             ", outside [0, classes = " + std::to_string(classes) + ")");
    }
  }
}

inline void check_classes(int classes, const char* where) {
  if (classes < 2) {
    throw invalid_argument(std::string(where) + ": classes must be >= 2 (got " +
                           std::to_string(classes) + ")");
  }
}

}  // namespace detail

/// Keeps a view of the features (the caller keeps them alive) and a copy of
/// the m labels. x and the outputs must not alias each other.
template <class T = double>
class softmax_regression {
 public:
  using scalar_type = T;
  /// Columns per chunk in the full-shard passes (bounds the scratch memory).
  static constexpr Eigen::Index chunk_columns = 1024;

  template <detail::matrix_view_source<T> F>
  softmax_regression(F&& features, std::span<const int> labels, int classes,
                     softmax_regression_options options = {})
      : a_(detail::make_view<T>(features, "softmax_regression")),
        labels_(labels.begin(), labels.end()),
        classes_(classes),
        options_(options) {
    options_.validate();
    detail::check_classes(classes, "softmax_regression");
    detail::check_samples(a_.cols(), "softmax_regression");
    if (a_.rows() == 0) throw invalid_argument("softmax_regression: the features have d = 0 rows");
    if (labels.size() != samples()) {
      throw invalid_argument(
          "softmax_regression: labels has size " + std::to_string(labels.size()) +
          ", expected the number of samples (feature columns) = " + std::to_string(samples()));
    }
    detail::check_class_labels(labels, classes, "softmax_regression");
    logits_.resize(classes_, std::min(chunk_columns, a_.cols()));
    const auto batch = static_cast<Eigen::Index>(options_.batch_size);
    batch_x_.resize(a_.rows(), batch);
    batch_logits_.resize(classes_, batch);
    batch_labels_.resize(options_.batch_size);
  }

  template <detail::matrix_view_source<T> F>
  softmax_regression(F&& features, const Eigen::Ref<const Eigen::VectorXi>& labels, int classes,
                     softmax_regression_options options = {})
      : softmax_regression(
            std::forward<F>(features),
            std::span<const int>(labels.data(), static_cast<std::size_t>(labels.size())), classes,
            options) {}

  [[nodiscard]] std::size_t dim() const noexcept {
    return static_cast<std::size_t>(classes_) * (features_dim() + (options_.bias ? 1 : 0));
  }
  [[nodiscard]] int classes() const noexcept { return classes_; }
  /// The parameters as named blocks: W (classes x d, column-major), then b
  /// (classes) when there is a bias; for compressors that work layer by layer.
  [[nodiscard]] parameter_layout layers() const {
    const auto c = static_cast<std::size_t>(classes_);
    parameter_layout out;
    out.add_matrix("W", c, features_dim());
    if (options_.bias) out.add_vector("b", c);
    return out;
  }
  /// d, the number of features per sample.
  [[nodiscard]] std::size_t features_dim() const noexcept {
    return static_cast<std::size_t>(a_.rows());
  }
  [[nodiscard]] std::size_t samples() const noexcept { return static_cast<std::size_t>(a_.cols()); }
  [[nodiscard]] const softmax_regression_options& options() const noexcept { return options_; }

  /// Mean cross-entropy over the shard + l2/2 ||W||^2.
  double loss(const Eigen::Ref<const vector_t<T>>& x) {
    detail::check_size(x, dim(), "softmax_regression::loss", "x");
    double sum = 0;
    for (Eigen::Index s = 0; s < a_.cols(); s += logits_.cols()) {
      const Eigen::Index n = std::min(logits_.cols(), a_.cols() - s);
      auto z = logits_.leftCols(n);
      compute_logits(x, a_.middleCols(s, n), z);
      for (Eigen::Index j = 0; j < n; ++j) {
        sum += detail::softmax_cross_entropy(z.col(j), labels_[static_cast<std::size_t>(s + j)]);
      }
    }
    return sum / static_cast<double>(samples()) +
           0.5 * options_.l2 * static_cast<double>(weights(x).squaredNorm());
  }

  void gradient(const Eigen::Ref<const vector_t<T>>& x, Eigen::Ref<vector_t<T>> g) {
    detail::check_size(x, dim(), "softmax_regression::gradient", "x");
    detail::check_size(g, dim(), "softmax_regression::gradient", "g");
    g.setZero();
    auto gw = weights(g);
    for (Eigen::Index s = 0; s < a_.cols(); s += logits_.cols()) {
      const Eigen::Index n = std::min(logits_.cols(), a_.cols() - s);
      auto z = logits_.leftCols(n);
      const auto block = a_.middleCols(s, n);
      compute_logits(x, block, z);
      for (Eigen::Index j = 0; j < n; ++j) {
        detail::softmax_cross_entropy_gradient(z.col(j), labels_[static_cast<std::size_t>(s + j)]);
      }
      detail::gemm_accumulate(gw, z, block.transpose());
      if (options_.bias) g.tail(classes_) += z.rowwise().sum();
    }
    g *= T(1) / static_cast<T>(samples());
    add_l2(x, g);
  }

  /// Mean gradient over batch_size samples drawn uniformly with replacement
  /// (rng.below(m)), plus the l2 term: the sampled columns are gathered into a
  /// d x batch_size scratch matrix and the products are GEMMs. Does not allocate.
  void stochastic_gradient(const Eigen::Ref<const vector_t<T>>& x, Eigen::Ref<vector_t<T>> g,
                           counter_rng& rng) {
    detail::check_size(x, dim(), "softmax_regression::stochastic_gradient", "x");
    detail::check_size(g, dim(), "softmax_regression::stochastic_gradient", "g");
    const std::uint64_t m = samples();
    for (Eigen::Index k = 0; k < batch_x_.cols(); ++k) {
      const auto i = rng.below(m);
      batch_x_.col(k) = a_.col(static_cast<Eigen::Index>(i));
      batch_labels_[static_cast<std::size_t>(k)] = labels_[i];
    }
    compute_logits(x, batch_x_, batch_logits_);
    for (Eigen::Index j = 0; j < batch_logits_.cols(); ++j) {
      detail::softmax_cross_entropy_gradient(batch_logits_.col(j),
                                             batch_labels_[static_cast<std::size_t>(j)]);
    }
    g.setZero();
    detail::gemm_accumulate(weights(g), batch_logits_, batch_x_.transpose());
    if (options_.bias) g.tail(classes_) = batch_logits_.rowwise().sum();
    g *= T(1) / static_cast<T>(batch_x_.cols());
    add_l2(x, g);
  }

  /// Fraction of this shard's samples whose largest logit is the label's.
  [[nodiscard]] double accuracy(const Eigen::Ref<const vector_t<T>>& x) {
    return accuracy(x, a_, std::span<const int>(labels_));
  }

  /// Fraction of the columns of `features` (d x n, e.g. a held-out test set)
  /// whose largest logit is the label's. Chunked GEMMs on this problem's
  /// scratch: no allocation when `features` is a Matrix, block or Map.
  [[nodiscard]] double accuracy(
      const Eigen::Ref<const vector_t<T>>& x,
      const Eigen::Ref<const matrix_t<T>, 0, Eigen::OuterStride<>>& features,
      std::span<const int> labels) {
    detail::check_size(x, dim(), "softmax_regression::accuracy", "x");
    return accuracy_impl(x, features, labels, classes_, options_.bias, logits_);
  }
  [[nodiscard]] double accuracy(
      const Eigen::Ref<const vector_t<T>>& x,
      const Eigen::Ref<const matrix_t<T>, 0, Eigen::OuterStride<>>& features,
      const Eigen::Ref<const Eigen::VectorXi>& labels) {
    return accuracy(x, features,
                    std::span<const int>(labels.data(), static_cast<std::size_t>(labels.size())));
  }

  /// The same without a problem object: x laid out as for a problem with
  /// `classes` classes, `bias` and features.rows() features.
  [[nodiscard]] static double accuracy(
      const Eigen::Ref<const vector_t<T>>& x,
      const Eigen::Ref<const matrix_t<T>, 0, Eigen::OuterStride<>>& features,
      std::span<const int> labels, int classes, bool bias = true) {
    detail::check_classes(classes, "softmax_regression::accuracy");
    const auto expected =
        static_cast<std::size_t>(classes) * (static_cast<std::size_t>(features.rows()) + bias);
    detail::check_size(x, expected, "softmax_regression::accuracy", "x",
                       "classes * (features.rows() + bias)");
    matrix_t<T> scratch(classes,
                        std::max<Eigen::Index>(1, std::min(chunk_columns, features.cols())));
    return accuracy_impl(x, features, labels, classes, bias, scratch);
  }
  [[nodiscard]] static double accuracy(
      const Eigen::Ref<const vector_t<T>>& x,
      const Eigen::Ref<const matrix_t<T>, 0, Eigen::OuterStride<>>& features,
      const Eigen::Ref<const Eigen::VectorXi>& labels, int classes, bool bias = true) {
    return accuracy(x, features,
                    std::span<const int>(labels.data(), static_cast<std::size_t>(labels.size())),
                    classes, bias);
  }

 private:
  using weights_map = Eigen::Map<matrix_t<T>>;
  using const_weights_map = Eigen::Map<const matrix_t<T>>;

  [[nodiscard]] const_weights_map weights(const Eigen::Ref<const vector_t<T>>& x) const {
    return const_weights_map(x.data(), classes_, a_.rows());
  }
  [[nodiscard]] weights_map weights(Eigen::Ref<vector_t<T>>& g) const {
    return weights_map(g.data(), classes_, a_.rows());
  }

  /// z = W * block (+ b per column).
  template <class Block, class Z>
  void compute_logits(const Eigen::Ref<const vector_t<T>>& x, const Block& block, Z&& z) const {
    logits_of(x, block, z, classes_, options_.bias);
  }

  template <class Block, class Z>
  static void logits_of(const Eigen::Ref<const vector_t<T>>& x, const Block& block, Z&& z,
                        int classes, bool bias) {
    const const_weights_map w(x.data(), classes, block.rows());
    if (bias) {
      z.colwise() = x.tail(classes);
    } else {
      z.setZero();
    }
    detail::gemm_accumulate(z, w, block);
  }

  static double accuracy_impl(
      const Eigen::Ref<const vector_t<T>>& x,
      const Eigen::Ref<const matrix_t<T>, 0, Eigen::OuterStride<>>& features,
      std::span<const int> labels, int classes, bool bias, matrix_t<T>& scratch) {
    if (labels.size() != static_cast<std::size_t>(features.cols())) {
      throw invalid_argument("softmax_regression::accuracy: " + std::to_string(features.cols()) +
                             " samples but " + std::to_string(labels.size()) + " labels");
    }
    if (features.cols() == 0) {
      throw invalid_argument("softmax_regression::accuracy: the data has no samples");
    }
    const auto expected =
        static_cast<std::size_t>(classes) * (static_cast<std::size_t>(features.rows()) + bias);
    detail::check_size(x, expected, "softmax_regression::accuracy", "x",
                       "classes * (features.rows() + bias)");
    std::size_t correct = 0;
    for (Eigen::Index s = 0; s < features.cols(); s += scratch.cols()) {
      const Eigen::Index n = std::min(scratch.cols(), features.cols() - s);
      auto z = scratch.leftCols(n);
      logits_of(x, features.middleCols(s, n), z, classes, bias);
      for (Eigen::Index j = 0; j < n; ++j) {
        Eigen::Index predicted = 0;
        z.col(j).maxCoeff(&predicted);
        correct += (predicted == labels[static_cast<std::size_t>(s + j)]) ? 1 : 0;
      }
    }
    return static_cast<double>(correct) / static_cast<double>(features.cols());
  }

  void add_l2(const Eigen::Ref<const vector_t<T>>& x, Eigen::Ref<vector_t<T>> g) const {
    if (options_.l2 != 0.0) {
      const Eigen::Index n = classes_ * a_.rows();
      g.head(n) += static_cast<T>(options_.l2) * x.head(n);
    }
  }

  detail::const_matrix_view<T> a_;
  std::vector<int> labels_;
  int classes_;
  softmax_regression_options options_;
  matrix_t<T> logits_;        // classes x min(m, chunk_columns)
  matrix_t<T> batch_x_;       // d x batch_size
  matrix_t<T> batch_logits_;  // classes x batch_size
  std::vector<int> batch_labels_;
};

template <class F, class L>
softmax_regression(F&&, L&&, int, softmax_regression_options = {})
    -> softmax_regression<typename std::remove_cvref_t<F>::Scalar>;

}  // namespace ecopt
