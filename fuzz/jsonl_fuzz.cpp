// The jsonl dataset plugin (multiple-choice JSON Lines: ARC, OpenBookQA, SciQ, HellaSwag, Winogrande,
// PIQA, the seed form, or dotted *_field paths) on a fuzzed file, with form = "auto" and "fields".
// What it accepts must be usable: an answer indexes the choices, and each choice has its letter.
#include "fuzz_common.h"
#include "moelab/context.h"
#include "moelab/dataset.h"
#include "plugin_registry.h"
#include "schema.h"

#include <memory>
#include <stdexcept>

namespace {

// The run a dataset sees: a seed and a folder; it asks for nothing else.
class FuzzContext final : public moelab::RunContext {
 public:
  const std::string& experiment_name() const override { return name_; }
  const std::filesystem::path& run_dir() const override { return moelab::fuzz::scratch(); }
  std::uint64_t seed() const override { return 0; }
  void record_metrics(nlohmann::json) override {}
  moelab::Model& model() override { throw std::logic_error("the jsonl dataset asked for the model"); }
  const std::filesystem::path& model_folder() override { throw std::logic_error("the jsonl dataset asked for the model folder"); }
  const moelab::Tokenizer& tokenizer() override { throw std::logic_error("the jsonl dataset asked for a tokenizer"); }
  std::shared_ptr<moelab::Plugin> make_component(const std::string& id, moelab::Kind) override {
    throw std::logic_error("the jsonl dataset asked for component " + id);
  }

 private:
  std::string name_ = "fuzz";
};

std::unique_ptr<moelab::PluginRegistry> registry;

void check(const moelab::Dataset& data) {
  for (std::size_t i = 0; i < data.size(); ++i) {
    const moelab::Example& e = data.at(i);
    const bool answer_ok = e.answer == -1 || (e.answer >= 0 && e.answer < static_cast<long long>(e.choices.size()));
    if (!answer_ok || e.letters.size() != e.choices.size()) {
      std::fprintf(stderr, "%s: answer %lld with %zu choices and %zu letters\n", e.origin.c_str(), e.answer, e.choices.size(),
                   e.letters.size());
      std::abort();
    }
  }
}

}  // namespace

extern "C" int LLVMFuzzerInitialize(int*, char***) {
  moelab::fuzz::quiet_logs();
  registry = std::make_unique<moelab::PluginRegistry>();
  registry->load(MOELAB_FUZZ_PLUGIN_DIR "/moelab_jsonl.so");
  return 0;
}

extern "C" int LLVMFuzzerTestOneInput(const std::uint8_t* data, std::size_t size) {
  const auto file = moelab::fuzz::write_input("data.jsonl", {reinterpret_cast<const char*>(data), size});
  const moelab::Descriptor& descriptor = *registry->get("jsonl").descriptor;
  FuzzContext context;
  for (const char* form : {"auto", "fields"}) {
    const toml::table table{{"plugin", "jsonl"}, {"path", file.string()}, {"form", form}};
    const moelab::Config config(moelab::check_table("data", table, {descriptor.keys, "plugin jsonl", true}, "fuzz"));
    moelab::fuzz::run_reader([&] {
      const auto dataset = std::dynamic_pointer_cast<moelab::Dataset>(registry->create("jsonl", config, context));
      if (dataset) check(*dataset);
    });
  }
  return 0;
}
