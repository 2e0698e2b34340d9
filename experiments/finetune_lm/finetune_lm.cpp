// Router-only finetuning on raw calibration text (recovery after quantization) with an objective
// plugin's loss (lm_ce) on `nsamples` seeded random windows of `seqlen` tokens, by the shared
// RouterTrainer (NaN guard, resume/ after an interrupt). Given the quantize stage's checkpoint it also
// writes recovered.safetensors: the packed experts, plan and config plus the finetuned routers and the
// training hyper-parameters.
#include "moelab/moelab.h"
#include "moelab/lib/calibration.h"
#include "moelab/lib/log.h"
#include "moelab/lib/objective_batch.h"
#include "moelab/lib/quantized_checkpoint.h"
#include "moelab/lib/router_trainer.h"

namespace {

struct Settings {
  std::string dataset;
  moelab::RouterTraining training;
  long long nsamples = 0, seqlen = 0;
  std::filesystem::path quantized;
  bool add_special_tokens = true;
};

const moelab::Options<Settings>& options() {
  static const auto o =
      moelab::Options<Settings>("finetune_lm", moelab::Kind::stage, "0.3.0", "router-only finetuning with a next-token loss on calibration text")
          .component("dataset", &Settings::dataset, moelab::Kind::dataset, "raw calibration text")
          .include(&Settings::training, moelab::router_training_options({/*last_layers=*/0, /*epochs=*/1, /*batch_size=*/1,
                                                                          /*warmup_steps=*/0, /*lr=*/1e-4, /*weight_decay=*/1e-4}))
          .integer("nsamples", &Settings::nsamples, 128, "random windows drawn from the text").at_least(1)
          .integer("seqlen", &Settings::seqlen, 2048, "tokens per window").at_least(2)
          .path("quantized", &Settings::quantized, "", "the quantize stage's checkpoint: also write recovered.safetensors (packed experts + finetuned routers)")
          .flag("add_special_tokens", &Settings::add_special_tokens, true,
                "the text's stream starts with tokenizer.json's post_processor tokens, as HF's tokenizer(text) of the joined text");
  return o;
}

// Windows of text: no answer options, so no multiple-choice objective.
constexpr moelab::ObjectiveNeeds kBatchesHold =
    moelab::need::token_logits | moelab::need::token_loss | moelab::need::router_logits | moelab::need::hidden_states;

class FinetuneLm final : public moelab::Stage {
 public:
  FinetuneLm(const moelab::Config& config, moelab::RunContext& context)
      : id_(config.id()), settings_(options().read(config)), context_(context),
        windows_(moelab::random_windows(moelab::token_stream(*context.make<moelab::Dataset>(settings_.dataset), context.tokenizer(),
                                                             settings_.add_special_tokens),
                                        settings_.nsamples, settings_.seqlen, context.seed_for(id_ + ".windows"), fmt::format("[{}] dataset", id_))) {}

  void run(const std::filesystem::path& out_dir, nlohmann::json& summary) override {
    // Left by an unfinished earlier attempt: a later stage must not load it if this one fails.
    if (std::filesystem::remove(out_dir / "recovered.safetensors"))
      moelab::log::warn("[{}] removed recovered.safetensors, left by an unfinished earlier attempt of this stage", id_);
    moelab::RouterTrainer trainer(settings_.training, context_, id_, kBatchesHold, id_ + ".order");
    auto batch = [&](const std::vector<std::size_t>& rows, const moelab::ObjectiveNeeds& needs) {
      torch::Tensor ids = windows_.index_select(0, torch::tensor(std::vector<int64_t>(rows.begin(), rows.end())));
      return moelab::forward_for_objective(context_.model(), ids, torch::ones_like(ids), needs);
    };
    summary = trainer.train({static_cast<std::size_t>(windows_.size(0)), batch}, out_dir,
                            {{"nsamples", settings_.nsamples}, {"seqlen", settings_.seqlen}});
    if (settings_.quantized.empty()) return;
    moelab::QuantizedCheckpoint recovered = moelab::read_quantized_checkpoint(context_.run_path(settings_.quantized));
    for (int l : trainer.layers()) recovered.routers[l] = context_.model().router_weight(l).detach();
    recovered.metadata["router_finetuning"] = summary["router_finetuning"];
    moelab::save_quantized_checkpoint(out_dir / "recovered.safetensors", context_.model(), recovered);
    summary["recovered"] = (out_dir / "recovered.safetensors").string();
  }

 private:
  std::string id_;
  Settings settings_;
  moelab::RunContext& context_;
  torch::Tensor windows_;  // [nsamples, seqlen] token ids
};

}  // namespace

MOELAB_PLUGIN(options, FinetuneLm)
MOELAB_OBJECTIVE_INPUTS(kBatchesHold)
