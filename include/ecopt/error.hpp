#pragma once
// The exception types of ecopt. Every failure the library detects is reported
// by one of these, with a message that names what was wrong (field, rank,
// file and line), never by a crash or a silently wrong result.
#include <stdexcept>
#include <string>

namespace ecopt {

/// Base of every ecopt exception.
class error : public std::runtime_error {
 public:
  using std::runtime_error::runtime_error;
};

/// A policy field, dimension or argument is out of range.
class invalid_argument : public error {
 public:
  using error::error;
};

/// A payload or frame is truncated, corrupt or inconsistent with its decoder.
class decode_error : public error {
 public:
  using error::error;
};

/// A peer vanished, failed, timed out or broke the protocol.
class transport_error : public error {
 public:
  using error::error;
};

/// A data file is missing, malformed or truncated.
class data_error : public error {
 public:
  using error::error;
};

/// A computation produced a non-finite value (NaN or infinity).
class numeric_error : public error {
 public:
  using error::error;
};

/// A checkpoint is truncated, corrupt, of another format version, or does not
/// match what it is loaded into (another dimension, layout, policy or world).
class checkpoint_error : public error {
 public:
  using error::error;
};

}  // namespace ecopt
