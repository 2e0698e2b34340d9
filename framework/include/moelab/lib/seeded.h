// The project's own seeded randomness for data order and sampling: the same seed gives the same
// windows, shuffles and resamples with every compiler and standard library. (std::mt19937_64's output
// is fixed by the standard; std::uniform_int_distribution, std::shuffle and std::hash are not.)
#pragma once

#include <cstdint>
#include <random>
#include <string_view>
#include <utility>
#include <vector>

namespace moelab {

// 64-bit FNV-1a of `text`: a hash that is the same on every machine, for seeding from a name or key.
std::uint64_t stable_hash(std::string_view text);

class SeededRng {
 public:
  explicit SeededRng(std::uint64_t seed = 0) : engine_(seed) {}

  std::uint64_t next() { return engine_(); }
  // Uniform in [0, n) by rejection (no modulo bias); n must be > 0.
  std::uint64_t below(std::uint64_t n) {
    const std::uint64_t limit = UINT64_MAX - UINT64_MAX % n;  // the largest multiple of n not above 2^64-1
    std::uint64_t x = next();
    while (x >= limit) x = next();
    return x % n;
  }
  // Fisher-Yates, from the back.
  template <class T>
  void shuffle(std::vector<T>& items) {
    for (std::size_t i = items.size(); i > 1; --i) std::swap(items[i - 1], items[below(i)]);
  }

  // The engine's state, for checkpoints that resume a data order (operator<< / >> of std::mt19937_64).
  std::mt19937_64& engine() { return engine_; }
  const std::mt19937_64& engine() const { return engine_; }

 private:
  std::mt19937_64 engine_;
};

}  // namespace moelab
