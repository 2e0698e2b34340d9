// The project's seeded randomness is the same with every standard library: known answers for the
// hash and the engine, an unbiased range, and shuffles that are permutations and follow the seed.
#include "moelab/lib/seeded.h"

#include <gtest/gtest.h>

#include <algorithm>
#include <numeric>

namespace {

TEST(Seeded, StableHashIsFnv1a64) {
  EXPECT_EQ(moelab::stable_hash(""), 0xcbf29ce484222325ull);   // the FNV-1a offset basis
  EXPECT_EQ(moelab::stable_hash("a"), 0xaf63dc4c8601ec8cull);  // FNV's published test vector
  EXPECT_NE(moelab::stable_hash("ab"), moelab::stable_hash("ba"));
}

TEST(Seeded, TheEngineIsTheStandardsMt19937_64) {
  moelab::SeededRng rng(5489u);
  std::uint64_t x = 0;
  for (int i = 0; i < 10000; ++i) x = rng.next();
  EXPECT_EQ(x, 9981545732273789042ull);  // [rand.predef]: the 10000th value for the default seed
}

TEST(Seeded, BelowIsInRangeAndUnbiased) {
  moelab::SeededRng rng(7);
  std::vector<int> counts(6, 0);
  for (int i = 0; i < 60000; ++i) {
    std::uint64_t v = rng.below(6);
    ASSERT_LT(v, 6u);
    ++counts[v];
  }
  for (int c : counts) EXPECT_NEAR(c, 10000, 400);
  EXPECT_EQ(moelab::SeededRng(1).below(1), 0u);
}

TEST(Seeded, ShuffleIsAPermutationThatFollowsTheSeed) {
  std::vector<int> a(50), b, c;
  std::iota(a.begin(), a.end(), 0);
  b = a;
  c = a;
  moelab::SeededRng(3).shuffle(a);
  moelab::SeededRng(3).shuffle(b);
  moelab::SeededRng(4).shuffle(c);
  EXPECT_EQ(a, b);
  EXPECT_NE(a, c);
  std::vector<int> sorted = a;
  std::sort(sorted.begin(), sorted.end());
  std::vector<int> expected(50);
  std::iota(expected.begin(), expected.end(), 0);
  EXPECT_EQ(sorted, expected);
  // Every position is reachable: over many seeds each item lands first about equally often.
  std::vector<int> first(4, 0);
  for (std::uint64_t seed = 0; seed < 4000; ++seed) {
    std::vector<int> v = {0, 1, 2, 3};
    moelab::SeededRng(seed).shuffle(v);
    ++first[v[0]];
  }
  for (int f : first) EXPECT_NEAR(f, 1000, 120);
}

}  // namespace
