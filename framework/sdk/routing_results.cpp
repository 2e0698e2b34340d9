#include "moelab/lib/routing_results.h"

#include "moelab/lib/files.h"
#include "moelab/lib/json_read.h"

#include <fmt/format.h>

#include <stdexcept>

namespace moelab {

namespace {
// Fields the reader does not need: kept when they are strings, left empty otherwise.
std::string optional_string(const nlohmann::json& object, const char* field) {
  return object.is_object() && object.contains(field) && object[field].is_string() ? object[field].get<std::string>() : "";
}
}  // namespace

std::vector<RoutingResult> read_routing_results(const std::filesystem::path& file) {
  const nlohmann::json j = read_json_file(file);
  if (!j.is_object()) throw std::runtime_error(fmt::format("{}: expected a JSON object keyed by question id", file.string()));
  std::vector<RoutingResult> out;
  for (const auto& [key, value] : j.items()) {
    RoutingResult r;
    r.key = key;
    r.origin = fmt::format("{} [\"{}\"]", file.string(), key);
    const JsonValue entry(value, r.origin);  // errors: file ["key"]: path inside the entry: what
    entry.expect_object();
    r.input_text = entry["input_text"].get<std::string>();
    r.correct_answer = entry["correct_answer"].get<std::string>();
    r.is_correct = entry.get_or("is_correct", false);
    const JsonValue last = entry["last_token_routing"].expect_object();
    r.model_answer = optional_string(value, "model_answer");
    r.set = optional_string(value, "set");
    r.token_text = optional_string(last.json(), "token_text");
    if (last.has("token_id") && last.json()["token_id"].is_number_integer()) r.token_id = last["token_id"].get<std::int64_t>();
    r.letters = entry.has("choice_letters") ? entry["choice_letters"].get<std::vector<std::string>>() : std::vector<std::string>{"A", "B", "C", "D"};
    for (const JsonValue& layer : last["layers"].expect_list().elements()) {
      std::vector<double>& dense = r.routing[layer.expect_object()["layer"].get<int>()];
      layer["routing_weights"].for_each_member([&](const std::string& name, const JsonValue& w) {
        const std::string digits = name.rfind("expert_", 0) == 0 ? name.substr(7) : "";
        if (digits.empty() || digits.size() > 6 || digits.find_first_not_of("0123456789") != std::string::npos)
          throw std::runtime_error(fmt::format("{}: routing key \"{}\" is not expert_<e> ({})", r.origin, name, w.path()));
        const std::size_t e = std::stoul(digits);
        if (dense.size() <= e) dense.resize(e + 1, 0.0);
        dense[e] = w.get<double>();
      });
    }
    r.entry = value;
    out.push_back(std::move(r));
  }
  if (out.empty()) throw std::runtime_error(fmt::format("{}: no entries", file.string()));
  return out;
}

void write_routing_results(const std::filesystem::path& file, const std::vector<RoutingResult>& results, RoutingWeights weights) {
  nlohmann::json out = nlohmann::json::object();
  for (const auto& r : results) {
    nlohmann::json layers = nlohmann::json::array();
    for (const auto& [layer, dense] : r.routing) {
      nlohmann::json named = nlohmann::json::object();
      for (std::size_t e = 0; e < dense.size(); ++e)
        if (weights == RoutingWeights::all || dense[e] != 0.0) named["expert_" + std::to_string(e)] = dense[e];
      layers.push_back({{"layer", layer}, {"routing_weights", named}});
    }
    nlohmann::json entry = {{"input_text", r.input_text},
                            {"last_token_routing", {{"token_id", r.token_id}, {"token_text", r.token_text}, {"layers", layers}}},
                            {"correct_answer", r.correct_answer},
                            {"is_correct", r.is_correct}};
    if (!r.letters.empty()) entry["choice_letters"] = r.letters;
    if (!r.model_answer.empty()) entry["model_answer"] = r.model_answer;
    if (!r.set.empty()) entry["set"] = r.set;
    out[r.key] = std::move(entry);
  }
  write_file_atomic(file, out.dump(1) + "\n");
}

}  // namespace moelab
