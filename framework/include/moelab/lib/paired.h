// Paired comparison of two systems scored on the same items (base vs finetuned, greedy vs RoE): the
// difference of means with a bootstrap 95% interval and, for 0/1 scores, an exact McNemar p-value.
#pragma once

#include <nlohmann/json.hpp>

#include <cstdint>
#include <vector>

namespace moelab {

// Two-sided exact McNemar test on the discordant pairs: b = only A right, c = only B right.
double mcnemar_exact(long long b, long long c);

// {"difference", "bootstrap_95": [lo, hi], "a_only", "b_only", "mcnemar_p"} for per-item scores of
// system a and system b (difference = mean(b) - mean(a)); a_only/b_only/mcnemar_p only for 0/1 scores.
nlohmann::json paired_comparison(const std::vector<double>& a, const std::vector<double>& b, std::uint64_t seed, int resamples = 2000);

}  // namespace moelab
