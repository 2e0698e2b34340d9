// Dataset of a routing-results JSON dict (RoMA's format): each entry's input_text is the prompt,
// correct_answer the gold letter; the whole entry stays in Example::record.
#include "moelab/moelab.h"
#include "moelab/lib/routing_results.h"

namespace {

struct Settings {
  std::filesystem::path path;
};

const moelab::Options<Settings>& options() {
  static const auto o =
      moelab::Options<Settings>("routing_results", moelab::Kind::dataset, "0.1.0", "RoMA routing-results JSON dict as a dataset")
          .path("path", &Settings::path, moelab::required, "the JSON file; \"@collect/routing_results.json\" reads a stage's output");
  return o;
}

class RoutingResults final : public moelab::Dataset {
 public:
  RoutingResults(const moelab::Config& config, moelab::RunContext& context) {
    for (auto& r : moelab::read_routing_results(context.run_path(options().read(config).path))) {
      moelab::Example ex;
      ex.id = r.key;
      ex.origin = r.origin;
      ex.text = r.input_text;
      ex.record = std::move(r.entry);
      ex.record["prompt"] = ex.text;
      ex.letters = r.letters;
      for (std::size_t i = 0; i < ex.letters.size(); ++i)
        if (ex.letters[i] == r.correct_answer) ex.answer = static_cast<long long>(i);
      if (ex.answer < 0)
        throw std::runtime_error(fmt::format("{}: correct_answer \"{}\" is not one of the choice letters", r.origin, r.correct_answer));
      examples_.push_back(std::move(ex));
    }
  }

  std::size_t size() const override { return examples_.size(); }
  const moelab::Example& at(std::size_t index) const override { return examples_.at(index); }

 private:
  std::vector<moelab::Example> examples_;
};

}  // namespace

MOELAB_PLUGIN(options, RoutingResults)
