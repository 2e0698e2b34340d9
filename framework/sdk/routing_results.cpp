#include "moelab/routing_results.h"

#include "moelab/files.h"

#include <fmt/format.h>

#include <stdexcept>

namespace moelab {

std::vector<RoutingResult> read_routing_results(const std::filesystem::path& file) {
  nlohmann::json j;
  try {
    j = nlohmann::json::parse(read_file(file));
  } catch (const nlohmann::json::exception& e) {
    throw std::runtime_error(fmt::format("{}: not valid JSON ({})", file.string(), e.what()));
  }
  if (!j.is_object()) throw std::runtime_error(fmt::format("{}: expected a JSON object keyed by question id", file.string()));
  std::vector<RoutingResult> out;
  for (const auto& [key, entry] : j.items()) {
    RoutingResult r;
    r.key = key;
    r.origin = fmt::format("{} [\"{}\"]", file.string(), key);
    try {
      for (const char* field : {"input_text", "correct_answer", "last_token_routing"})
        if (!entry.contains(field)) throw std::runtime_error(fmt::format("missing \"{}\"", field));
      r.input_text = entry["input_text"].get<std::string>();
      r.correct_answer = entry["correct_answer"].get<std::string>();
      r.is_correct = entry.value("is_correct", false);
      r.letters = entry.contains("choice_letters") ? entry["choice_letters"].get<std::vector<std::string>>()
                                                    : std::vector<std::string>{"A", "B", "C", "D"};
      for (const auto& layer : entry["last_token_routing"].at("layers")) {
        std::vector<double>& dense = r.routing[layer.at("layer").get<int>()];
        for (const auto& [name, w] : layer.at("routing_weights").items()) {
          if (name.rfind("expert_", 0) != 0) throw std::runtime_error(fmt::format("routing key \"{}\" is not expert_<e>", name));
          std::size_t e = std::stoul(name.substr(7));
          if (dense.size() <= e) dense.resize(e + 1, 0.0);
          dense[e] = w.get<double>();
        }
      }
    } catch (const std::exception& e) {
      throw std::runtime_error(fmt::format("{}: {}", r.origin, e.what()));
    }
    r.entry = entry;
    out.push_back(std::move(r));
  }
  if (out.empty()) throw std::runtime_error(fmt::format("{}: no entries", file.string()));
  return out;
}

}  // namespace moelab
