// Runs the model over multiple-choice questions and writes RoMA's routing-results JSON: for each
// question the prompt, the routing at its last prompt token in every MoE layer (full softmax by
// default, as the public files record it), the model's answer and whether it is correct.
#include "moelab/moelab.h"

namespace {

class CollectRouting final : public moelab::Stage {
 public:
  CollectRouting(const moelab::Config& config, moelab::RunContext& context)
      : dataset_(context.make<moelab::Dataset>(config.get_string("dataset"))),
        format_(moelab::prompt_format(config)),
        max_len_(config.get_int("max_len")),
        batch_size_(config.get_int("batch_size")),
        top_k_only_(config.get_bool("top_k_only")),
        context_(context) {}

  void run(const std::filesystem::path& out_dir, nlohmann::json& summary) override {
    moelab::Model& model = context_.model();
    const moelab::Tokenizer& tokenizer = context_.tokenizer();
    std::vector<moelab::McItem> items;
    for (std::size_t i = 0; i < dataset_->size(); ++i) items.push_back(moelab::prepare_item(dataset_->at(i), tokenizer, format_, max_len_));
    torch::NoGradGuard no_grad;
    nlohmann::json results = nlohmann::json::object();
    long long correct = 0;
    moelab::Progress progress("collect_routing", static_cast<long long>((items.size() + batch_size_ - 1) / batch_size_), "questions");
    for (std::size_t start = 0; start < items.size(); start += batch_size_) {
      std::vector<const moelab::McItem*> rows;
      for (std::size_t i = start; i < std::min(items.size(), start + batch_size_); ++i) rows.push_back(&items[i]);
      moelab::McBatch batch = moelab::make_batch(rows, std::max<long long>(model.info().pad_token_id, 0));
      torch::Tensor last_logits = model.forward(batch.input_ids, batch.attention_mask, nullptr, /*last_only=*/true).select(1, 0).cpu();
      torch::Tensor last = moelab::last_positions(batch.attention_mask);
      const long long width = batch.input_ids.size(1);
      std::vector<torch::Tensor> probs;  // per MoE layer [B, E] at the last token
      for (const auto& trace : model.routing()) {
        torch::Tensor per_token = trace.logits.view({static_cast<long long>(rows.size()), width, -1});
        probs.push_back(moelab::at_positions(per_token, last).softmax(-1).to(torch::kFloat32).cpu());
      }
      for (std::size_t r = 0; r < rows.size(); ++r) {
        const moelab::McItem& item = *rows[r];
        torch::Tensor option = last_logits[r].index_select(0, torch::tensor(item.letter_ids));
        long long predicted = option.argmax().item<int64_t>();
        bool is_correct = predicted == item.answer;
        correct += is_correct;
        nlohmann::json layers = nlohmann::json::array();
        for (std::size_t l = 0; l < probs.size(); ++l) {
          torch::Tensor p = probs[l][r];
          torch::Tensor keep = top_k_only_ ? std::get<1>(p.topk(model.info().top_k)) : torch::arange(p.size(0));
          nlohmann::json weights = nlohmann::json::object();
          for (long long e : std::vector<int64_t>(keep.data_ptr<int64_t>(), keep.data_ptr<int64_t>() + keep.numel()))
            weights["expert_" + std::to_string(e)] = p[e].item<double>();
          layers.push_back({{"layer", model.info().moe_layers[l]}, {"routing_weights", weights}});
        }
        long long last_token = batch.input_ids[r][last[r].item<int64_t>()].item<int64_t>();
        results[item.key] = {{"input_text", item.prompt},
                             {"last_token_routing",
                              {{"token_id", last_token}, {"token_text", tokenizer.decode({last_token})}, {"layers", layers}}},
                             {"correct_answer", item.letters.at(item.answer)},
                             {"model_answer", item.letters.at(predicted)},
                             {"is_correct", is_correct},
                             {"choice_letters", item.letters}};
      }
      progress.advance(static_cast<long long>(rows.size()));
    }
    progress.finish();
    moelab::write_file_atomic(out_dir / "routing_results.json", results.dump(1) + "\n");
    double accuracy = items.empty() ? 0.0 : static_cast<double>(correct) / items.size();
    summary = {{"questions", items.size()}, {"correct", correct}, {"accuracy", accuracy},
               {"routing_results", (out_dir / "routing_results.json").string()}};
    moelab::log::info("collect_routing: {} questions, {} answered correctly ({:.1f}%) -> successful set for RoMA", items.size(), correct,
                      100 * accuracy);
  }

 private:
  std::shared_ptr<moelab::Dataset> dataset_;
  moelab::PromptFormat format_;
  std::size_t max_len_, batch_size_;
  bool top_k_only_;
  moelab::RunContext& context_;
};

moelab::Descriptor describe() {
  moelab::Descriptor d("collect_routing", moelab::Kind::stage, "0.1.0", "routing-results JSON (RoMA's input) from multiple-choice data");
  d.component("dataset", moelab::Kind::dataset, "", "multiple-choice questions")
      .integer("batch_size", 16, "questions per forward")
      .flag("top_k_only", false, "record only the top-k experts' weights (default: all experts, full softmax)");
  return moelab::add_prompt_keys(d);
}

}  // namespace

MOELAB_PLUGIN(describe, CollectRouting)
