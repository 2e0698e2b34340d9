// A cheap task embedder: the experiment's own MoE model, its final hidden states mean-pooled over
// each text's tokens and scaled to unit length. Needs no second model on disk.
#include "moelab/moelab.h"
#include "moelab/lib/log.h"
#include "moelab/lib/multiple_choice.h"

namespace {

struct Settings {
  std::size_t batch_size, max_len;
};

const moelab::Options<Settings>& options() {
  static const auto o =
      moelab::Options<Settings>("model_mean", moelab::Kind::embedder, "0.1.0", "mean-pooled final hidden states of the experiment's model")
          .integer("batch_size", &Settings::batch_size, 16, "texts per forward").at_least(1)
          .integer("max_len", &Settings::max_len, 512, "tokens kept per text (the first ones)").at_least(1);
  return o;
}

class ModelMeanEmbedder final : public moelab::Embedder {
 public:
  ModelMeanEmbedder(const moelab::Config& config, moelab::RunContext& context) : settings_(options().read(config)), context_(context) {}

  torch::Tensor embed(const std::vector<std::string>& texts) override {
    torch::NoGradGuard no_grad;
    moelab::Model& model = context_.model();
    std::vector<moelab::McItem> items(texts.size());
    for (std::size_t i = 0; i < texts.size(); ++i) {
      items[i].prompt_ids = context_.tokenizer().encode(texts[i]);
      if (items[i].prompt_ids.empty()) items[i].prompt_ids.push_back(std::max<long long>(model.info().eos_token_id, 0));
      if (items[i].prompt_ids.size() > settings_.max_len) items[i].prompt_ids.resize(settings_.max_len);
    }
    std::vector<torch::Tensor> out;
    moelab::Progress progress("model_mean embed", static_cast<long long>((texts.size() + settings_.batch_size - 1) / settings_.batch_size), "texts");
    for (std::size_t start = 0; start < items.size(); start += settings_.batch_size) {
      std::vector<const moelab::McItem*> rows;
      for (std::size_t i = start; i < std::min(items.size(), start + settings_.batch_size); ++i) rows.push_back(&items[i]);
      moelab::McBatch batch = moelab::make_batch(rows, std::max<long long>(model.info().pad_token_id, 0));
      model.forward(batch.input_ids, batch.attention_mask, nullptr, /*last_only=*/true);
      torch::Tensor mask = batch.attention_mask.to(model.device(), torch::kFloat32).unsqueeze(-1);
      torch::Tensor mean = (model.hidden_states().to(torch::kFloat32) * mask).sum(1) / mask.sum(1);
      out.push_back((mean / mean.norm(2, 1, true).clamp_min(1e-12)).cpu());
      progress.advance(static_cast<long long>(rows.size()));
    }
    progress.finish();
    return torch::cat(out);
  }

 private:
  Settings settings_;
  moelab::RunContext& context_;
};

}  // namespace

MOELAB_PLUGIN(options, ModelMeanEmbedder)
