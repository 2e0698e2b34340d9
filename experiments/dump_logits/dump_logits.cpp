// Runs the model on token ids from a safetensors file (input_ids int64 [batch, seq], optional
// attention_mask) and writes logits and router_logits.<layer> (float32) for numerical comparison with
// other stacks.
#include "moelab/moelab.h"
#include "moelab/lib/log.h"
#include "moelab/lib/distributed.h"
#include "moelab/lib/safetensors.h"

namespace {

struct Settings {
  std::filesystem::path input;
  std::string output;
};

const moelab::Options<Settings>& options() {
  static const auto o =
      moelab::Options<Settings>("dump_logits", moelab::Kind::stage, "0.1.0", "writes logits and router logits for given token ids")
          .path("input", &Settings::input, moelab::required, "safetensors file with input_ids int64 [batch, seq] (and optional attention_mask)")
          .string("output", &Settings::output, "logits.safetensors", "file name inside the stage folder");
  return o;
}

class DumpLogits final : public moelab::Stage {
 public:
  DumpLogits(const moelab::Config& config, moelab::RunContext& context) : settings_(options().read(config)), context_(context) {}

  void run(const std::filesystem::path& out_dir, nlohmann::json& summary) override {
    moelab::SafetensorsFile in(settings_.input);
    if (!in.contains("input_ids")) throw std::runtime_error(fmt::format("{}: no tensor 'input_ids'", settings_.input.string()));
    torch::Tensor ids = in.get("input_ids");
    if (ids.dim() != 2 || ids.scalar_type() != torch::kInt64)
      throw std::runtime_error(fmt::format("{}: input_ids must be int64 [batch, seq]", settings_.input.string()));
    torch::Tensor mask = in.contains("attention_mask") ? in.get("attention_mask") : torch::Tensor();
    moelab::Model& model = context_.model();
    torch::NoGradGuard no_grad;
    torch::Tensor logits = model.forward(ids, mask);
    std::vector<std::pair<std::string, torch::Tensor>> out = {{"logits", logits}};
    for (const auto& trace : model.routing()) out.emplace_back("router_logits." + std::to_string(trace.layer), trace.logits);
    if (moelab::distributed::is_main())  // torchrun: every rank ran the whole input; rank 0 writes
      moelab::write_safetensors(out_dir / settings_.output, out, {{"model_type", model.info().model_type}, {"source", settings_.input.string()}});
    summary = {{"batch", ids.size(0)}, {"tokens", ids.numel()}, {"output", (out_dir / settings_.output).string()}};
    moelab::log::info("dump_logits: {} rows x {} tokens -> {}", ids.size(0), ids.size(1), (out_dir / settings_.output).string());
  }

 private:
  Settings settings_;
  moelab::RunContext& context_;
};

}  // namespace

MOELAB_PLUGIN(options, DumpLogits)
