#pragma once
// Buffers of tcp_transport: a FIFO that does not allocate in steady state,
// the pool's best-fit pick, and Asio helpers for gathered writes.
#include <boost/asio/buffer.hpp>
#include <boost/system/error_code.hpp>
#include <cstddef>
#include <utility>
#include <vector>

namespace ecopt::detail {

/// A FIFO on a growable circular buffer: pushes reuse slots, so a steady
/// stream of messages does not allocate (std::deque would, per block).
template <class T>
class ring_fifo {
 public:
  explicit ring_fifo(std::size_t capacity = 16) : slots_(capacity) {}
  [[nodiscard]] bool empty() const noexcept { return count_ == 0; }
  [[nodiscard]] std::size_t size() const noexcept { return count_; }
  T& front() noexcept { return slots_[head_]; }
  void pop() noexcept {
    head_ = (head_ + 1) % slots_.size();
    --count_;
  }
  void push(T&& value) {
    if (count_ == slots_.size()) {
      std::vector<T> bigger(2 * slots_.size());
      for (std::size_t i = 0; i < count_; ++i) {
        bigger[i] = std::move(slots_[(head_ + i) % slots_.size()]);
      }
      slots_.swap(bigger);
      head_ = 0;
    }
    slots_[(head_ + count_) % slots_.size()] = std::move(value);
    ++count_;
  }

 private:
  std::vector<T> slots_;
  std::size_t head_ = 0;
  std::size_t count_ = 0;
};

/// Takes the pooled buffer that fits `size` best: the smallest large enough,
/// preferring one whose size() already covers it (resizing it down and up
/// again would zero-fill the difference: a pass over memory per message when
/// sizes alternate, as in recursive halving); else the largest, which then
/// grows. An empty vector if the pool is empty.
inline std::vector<std::byte> take_pooled(std::vector<std::vector<std::byte>>& pool,
                                          std::size_t size) {
  if (pool.empty()) return {};
  std::size_t best = pool.size();
  std::size_t largest = 0;
  // Order of preference: (size() covers it, then capacity) smallest first.
  auto better = [size](const std::vector<std::byte>& a, const std::vector<std::byte>& b) {
    const bool a_filled = a.size() >= size;
    const bool b_filled = b.size() >= size;
    if (a_filled != b_filled) return a_filled;
    return a.capacity() < b.capacity();
  };
  for (std::size_t i = 0; i < pool.size(); ++i) {
    const std::size_t cap = pool[i].capacity();
    if (cap >= size && (best == pool.size() || better(pool[i], pool[best]))) best = i;
    if (cap > pool[largest].capacity()) largest = i;
  }
  const std::size_t pick = best < pool.size() ? best : largest;
  std::vector<std::byte> out = std::move(pool[pick]);
  pool[pick] = std::move(pool.back());
  pool.pop_back();
  return out;  // not cleared: resizing to a message of the same size then writes nothing
}

/// Bytes still to move, without Asio's default cap of 64 KiB per system call.
struct transfer_rest {
  std::size_t total;
  std::size_t operator()(const boost::system::error_code& ec, std::size_t done) const noexcept {
    return ec ? 0 : total - done;
  }
};

/// A buffer sequence over part of an array (Asio copies this, not the array).
struct const_buffer_range {
  using value_type = boost::asio::const_buffer;
  using const_iterator = const boost::asio::const_buffer*;
  const_iterator first;
  const_iterator last;
  [[nodiscard]] const_iterator begin() const noexcept { return first; }
  [[nodiscard]] const_iterator end() const noexcept { return last; }
};

}  // namespace ecopt::detail
