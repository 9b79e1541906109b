#pragma once
// The softmax cross-entropy of one column of logits, the output layer of
// softmax_regression and mlp:
//   loss(z, y) = logsumexp(z) - z_y,   d loss / dz = softmax(z) - onehot(y),
// with the largest logit subtracted first so that exp cannot overflow. Both
// work on the caller's column in place: nothing is allocated.
#include <Eigen/Core>
#include <cmath>
#include <type_traits>

namespace ecopt::detail {

/// The cross-entropy of the logits z (a column vector expression) against
/// the class `label`, in [0, z.size()).
template <class Col>
[[nodiscard]] double softmax_cross_entropy(const Col& z, int label) {
  using T = typename Col::Scalar;
  const T top = z.maxCoeff();
  const T shifted_label = z[label] - top;
  const T sum = (z.array() - top).exp().sum();
  return static_cast<double>(std::log(sum) - shifted_label);
}

/// The same cross-entropy, returned, and z overwritten with its gradient in
/// the logits, softmax(z) - onehot(label). z is a writable column (a block or
/// map of the caller's scratch).
template <class Col>
double softmax_cross_entropy_gradient(Col&& z, int label) {
  using T = typename std::remove_cvref_t<Col>::Scalar;
  const T top = z.maxCoeff();
  const T shifted_label = z[label] - top;
  z = (z.array() - top).exp();
  const T sum = z.sum();
  z *= T(1) / sum;
  z[label] -= T(1);
  return static_cast<double>(std::log(sum) - shifted_label);
}

}  // namespace ecopt::detail
