// RoMA's routing-results JSON dict: {"<id>": {"input_text", "last_token_routing": {"token_id", "token_text",
// "layers": [{"layer", "routing_weights": {"expert_<e>": w}}]}, "correct_answer", "is_correct", ...}}.
// One record struct, read with validation (errors name the file, the entry and the field) and written.
#pragma once

#include <nlohmann/json.hpp>

#include <cstdint>
#include <filesystem>
#include <map>
#include <string>
#include <vector>

namespace moelab {

struct RoutingResult {
  std::string key, input_text, correct_answer;
  bool is_correct = false;
  std::vector<std::string> letters;            // choice_letters, or A-D when the file has none; not written when empty
  std::map<int, std::vector<double>> routing;  // decoder layer -> dense weights by expert
  std::int64_t token_id = -1;                  // the last prompt token
  std::string token_text;
  std::string model_answer;  // optional: not written when empty
  std::string set;           // optional: the text set of a collect stage; not written when empty
  nlohmann::json entry;      // read: the whole entry
  std::string origin;        // read: "file [\"key\"]"
};

std::vector<RoutingResult> read_routing_results(const std::filesystem::path& file);

// Which routing weights a written entry keeps: all experts, or only non-zero ones (top-k recordings).
enum class RoutingWeights { all, nonzero };
// Writes `results` keyed by RoutingResult::key (a repeated key keeps the last), atomically.
void write_routing_results(const std::filesystem::path& file, const std::vector<RoutingResult>& results,
                           RoutingWeights weights = RoutingWeights::all);

}  // namespace moelab
