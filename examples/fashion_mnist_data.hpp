#pragma once
// Fashion-MNIST for the example programs (not part of the library): Xiao,
// Rasul, Vollgraf 2017, arXiv:1708.07747, 60k training and 10k test images of
// 28 x 28 pixels in 10 classes, as Debian's dataset-fashion-mnist package
// installs them (gzip IDX files). Each image is flattened into one column of
// 784 floats, pixels scaled to [0, 1] (ecopt::load_idx_images).
#include <Eigen/Core>
#include <filesystem>
#include <string>
#include <utility>

#include "ecopt/data/idx.hpp"
#include "ecopt/problems/mlp.hpp"
#include "ecopt/problems/shard.hpp"

namespace ecopt_examples {

/// Where dataset-fashion-mnist puts the files (the examples' --data default).
inline const std::filesystem::path fashion_mnist_default_dir = "/usr/share/datasets/fashion-mnist";

/// One split: 784 x m images, one per column, in [0, 1], and their m labels in [0, 10).
struct fashion_mnist_split {
  Eigen::MatrixXf images;
  Eigen::VectorXi labels;
};

/// Loads `split` ("train" or "t10k") from dir/<split>-images-idx3-ubyte.gz and
/// dir/<split>-labels-idx1-ubyte.gz, images first.
inline fashion_mnist_split load_fashion_mnist_split(const std::filesystem::path& dir,
                                                    const std::string& split) {
  fashion_mnist_split out;
  out.images = ecopt::load_idx_images<float>(dir / (split + "-images-idx3-ubyte.gz"));
  out.labels = ecopt::load_idx_labels(dir / (split + "-labels-idx1-ubyte.gz"));
  return out;
}

/// Whether dir holds the training images (the examples that can skip
/// Fashion-MNIST ask this first).
inline bool fashion_mnist_installed(const std::filesystem::path& dir) {
  return std::filesystem::exists(dir / "train-images-idx3-ubyte.gz");
}

/// Both splits.
struct fashion_mnist_data {
  Eigen::MatrixXf train_images, test_images;  // 784 x m, one image per column, in [0, 1]
  Eigen::VectorXi train_labels, test_labels;
};

/// Loads the training split, then the test split.
inline fashion_mnist_data load_fashion_mnist(const std::filesystem::path& dir) {
  auto train = load_fashion_mnist_split(dir, "train");
  auto test = load_fashion_mnist_split(dir, "t10k");
  return {std::move(train.images), std::move(test.images), std::move(train.labels),
          std::move(test.labels)};
}

/// The MLP of one worker: its contiguous shard of the training images (of
/// `world`), ten classes. The problem views `data`, which must outlive it.
inline ecopt::mlp<float> training_shard_mlp(const fashion_mnist_data& data, int rank, int world,
                                            ecopt::mlp_options options) {
  const auto m = static_cast<std::size_t>(data.train_images.cols());
  const auto shard = ecopt::shard_range(m, rank, world);
  const auto begin = static_cast<Eigen::Index>(shard.begin);
  const auto count = static_cast<Eigen::Index>(shard.count);
  return ecopt::mlp<float>(data.train_images.middleCols(begin, count),
                           data.train_labels.segment(begin, count), 10, options);
}

}  // namespace ecopt_examples
