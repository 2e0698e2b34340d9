// RoMA's routing-results JSON dict, read once with validation: {"<id>": {"input_text",
// "last_token_routing": {"layers": [{"layer", "routing_weights": {"expert_<e>": w}}]}, "correct_answer",
// "is_correct", ...}}. Errors name the file, the entry and the field.
#pragma once

#include <nlohmann/json.hpp>

#include <filesystem>
#include <map>
#include <string>
#include <vector>

namespace moelab {

struct RoutingResult {
  std::string key, input_text, correct_answer;
  bool is_correct = false;
  std::vector<std::string> letters;              // choice_letters, or A-D when the file has none
  std::map<int, std::vector<double>> routing;  // decoder layer -> dense weights by expert
  nlohmann::json entry;                          // the whole entry
  std::string origin;                            // "file [\"key\"]"
};

std::vector<RoutingResult> read_routing_results(const std::filesystem::path& file);

}  // namespace moelab
