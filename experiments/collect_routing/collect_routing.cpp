// Runs the model over multiple-choice questions and writes RoMA's routing-results JSON: for each
// question the prompt, the routing at its last prompt token in every MoE layer (full softmax by
// default, as the public files record it), the model's answer and whether it is correct.
#include "moelab/moelab.h"
#include "moelab/lib/finite.h"
#include "moelab/lib/log.h"
#include "moelab/lib/multiple_choice.h"
#include "moelab/lib/routing_results.h"

namespace {

struct Settings {
  std::string dataset;
  std::size_t batch_size;
  bool top_k_only;
  moelab::PromptOptions prompt;
};

const moelab::Options<Settings>& options() {
  static const auto o =
      moelab::Options<Settings>("collect_routing", moelab::Kind::stage, "0.1.0", "routing-results JSON (RoMA's input) from multiple-choice data")
          .component("dataset", &Settings::dataset, moelab::Kind::dataset, "multiple-choice questions")
          .integer("batch_size", &Settings::batch_size, 16, "questions per forward").at_least(1)
          .flag("top_k_only", &Settings::top_k_only, false, "record only the top-k experts' weights (default: all experts, full softmax)")
          .include(&Settings::prompt, moelab::prompt_options());
  return o;
}

class CollectRouting final : public moelab::Stage {
 public:
  CollectRouting(const moelab::Config& config, moelab::RunContext& context)
      : id_(config.id()), settings_(options().read(config)), dataset_(context.make<moelab::Dataset>(settings_.dataset)), context_(context) {}

  void run(const std::filesystem::path& out_dir, nlohmann::json& summary) override {
    moelab::Model& model = context_.model();
    const moelab::Tokenizer& tokenizer = context_.tokenizer();
    std::vector<moelab::McItem> items;
    for (std::size_t i = 0; i < dataset_->size(); ++i)
      items.push_back(moelab::prepare_item(dataset_->at(i), tokenizer, settings_.prompt, settings_.prompt.max_len));
    const std::size_t batch_size = settings_.batch_size;
    torch::NoGradGuard no_grad;
    std::vector<moelab::RoutingResult> results;
    long long correct = 0;
    moelab::Progress progress("collect_routing", static_cast<long long>((items.size() + batch_size - 1) / batch_size), "questions");
    for (std::size_t start = 0; start < items.size(); start += batch_size) {
      std::vector<const moelab::McItem*> rows;
      for (std::size_t i = start; i < std::min(items.size(), start + batch_size); ++i) rows.push_back(&items[i]);
      moelab::McBatch batch = moelab::make_batch(rows, std::max<long long>(model.info().pad_token_id, 0));
      torch::Tensor last_logits = model.forward(batch.input_ids, batch.attention_mask, nullptr, /*last_only=*/true).select(1, 0);
      // NaN routing would be written as null and marked done: refuse it, naming the layer.
      moelab::require_finite_forward(model, batch.attention_mask, last_logits,
                                     fmt::format("[{}] questions {}-{} of {}", id_, start + 1, start + rows.size(), items.size()));
      last_logits = last_logits.cpu();
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
        moelab::RoutingResult result;
        for (std::size_t l = 0; l < probs.size(); ++l) {
          torch::Tensor p = probs[l][r];
          // top_k_only keeps the top-k weights; the others stay 0 and are not written.
          torch::Tensor keep = settings_.top_k_only ? std::get<1>(p.topk(model.info().top_k)) : torch::arange(p.size(0));
          std::vector<double>& weights = result.routing[model.info().moe_layers[l]];
          weights.assign(static_cast<std::size_t>(p.size(0)), 0.0);
          for (long long e : std::vector<int64_t>(keep.data_ptr<int64_t>(), keep.data_ptr<int64_t>() + keep.numel()))
            weights[static_cast<std::size_t>(e)] = p[e].item<double>();
        }
        result.key = item.key;
        result.input_text = item.prompt;
        result.token_id = batch.input_ids[r][last[r].item<int64_t>()].item<int64_t>();
        result.token_text = tokenizer.decode({result.token_id});
        result.correct_answer = item.letters.at(item.answer);
        result.model_answer = item.letters.at(predicted);
        result.is_correct = is_correct;
        result.letters = item.letters;
        results.push_back(std::move(result));
      }
      progress.advance(static_cast<long long>(rows.size()));
    }
    progress.finish();
    moelab::write_routing_results(out_dir / "routing_results.json", results,
                                  settings_.top_k_only ? moelab::RoutingWeights::nonzero : moelab::RoutingWeights::all);
    double accuracy = items.empty() ? 0.0 : static_cast<double>(correct) / items.size();
    summary = {{"questions", items.size()}, {"correct", correct}, {"accuracy", accuracy},
               {"routing_results", (out_dir / "routing_results.json").string()}};
    moelab::log::info("collect_routing: {} questions, {} answered correctly ({:.1f}%) -> successful set for RoMA", items.size(), correct,
                      100 * accuracy);
  }

 private:
  std::string id_;
  Settings settings_;
  std::shared_ptr<moelab::Dataset> dataset_;
  moelab::RunContext& context_;
};

}  // namespace

MOELAB_PLUGIN(options, CollectRouting)
