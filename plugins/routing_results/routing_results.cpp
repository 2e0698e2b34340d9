// Dataset of a routing-results JSON dict (RoMA's format): each entry's input_text is the prompt,
// correct_answer the gold letter; the whole entry stays in Example::record.
#include "moelab/moelab.h"

namespace {

class RoutingResults final : public moelab::Dataset {
 public:
  RoutingResults(const moelab::Config& config, moelab::RunContext& context) {
    std::filesystem::path path = context.run_path(config.get_path("path"));
    nlohmann::json j;
    try {
      j = nlohmann::json::parse(moelab::read_file(path));
    } catch (const nlohmann::json::exception& e) {
      throw std::runtime_error(fmt::format("{}: not valid JSON ({})", path.string(), e.what()));
    }
    if (!j.is_object()) throw std::runtime_error(fmt::format("{}: expected a JSON object keyed by question id", path.string()));
    for (const auto& [key, entry] : j.items()) {
      std::string origin = fmt::format("{} [\"{}\"]", path.string(), key);
      for (const char* field : {"input_text", "correct_answer", "last_token_routing"})
        if (!entry.contains(field)) throw std::runtime_error(fmt::format("{}: missing \"{}\"", origin, field));
      moelab::Example ex;
      ex.id = key;
      ex.origin = origin;
      ex.text = entry["input_text"].get<std::string>();
      ex.record = entry;
      ex.record["prompt"] = ex.text;
      ex.letters = entry.contains("choice_letters") ? entry["choice_letters"].get<std::vector<std::string>>()
                                                     : std::vector<std::string>{"A", "B", "C", "D"};
      std::string gold = entry["correct_answer"].get<std::string>();
      for (std::size_t i = 0; i < ex.letters.size(); ++i)
        if (ex.letters[i] == gold) ex.answer = static_cast<long long>(i);
      if (ex.answer < 0) throw std::runtime_error(fmt::format("{}: correct_answer \"{}\" is not one of the choice letters", origin, gold));
      examples_.push_back(std::move(ex));
    }
    if (examples_.empty()) throw std::runtime_error(fmt::format("{}: no entries", path.string()));
  }

  std::size_t size() const override { return examples_.size(); }
  const moelab::Example& at(std::size_t index) const override { return examples_.at(index); }

 private:
  std::vector<moelab::Example> examples_;
};

moelab::Descriptor describe() {
  return moelab::Descriptor("routing_results", moelab::Kind::dataset, "0.1.0", "RoMA routing-results JSON dict as a dataset")
      .required("path", moelab::KeyType::path, "the JSON file; \"@collect/routing_results.json\" reads a stage's output");
}

}  // namespace

MOELAB_PLUGIN(describe, RoutingResults)
