// Runs the model over multiple-choice questions and writes RoMA's routing-results JSON: for each
// question the prompt, the routing at its last prompt token in every MoE layer (full softmax by
// default, as the public files record it), the model's answer and whether it is correct.
#include "moelab/moelab.h"
#include "moelab/lib/distributed.h"
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
    // torchrun: this rank runs its contiguous share of the batches (the same batches as one process); the
    // results are gathered below in one-process order.
    const auto [b0, b1] = moelab::distributed::shard_range((items.size() + batch_size - 1) / batch_size);
    const std::size_t first = std::min(items.size(), b0 * batch_size), end = std::min(items.size(), b1 * batch_size);
    if (moelab::distributed::active() && moelab::distributed::data_parallel())
      moelab::log::info("[{}] rank {} of {} runs batches {}-{} of {}", id_, moelab::distributed::rank(), moelab::distributed::world_size(), b0 + 1,
                        b1, (items.size() + batch_size - 1) / batch_size);
    moelab::Progress progress("collect_routing", static_cast<long long>(end - first), "questions");
    for (std::size_t start = first; start < end; start += batch_size) {
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
    if (moelab::distributed::active()) gather(results, correct);
    moelab::write_routing_results(out_dir / "routing_results.json", results,
                                  settings_.top_k_only ? moelab::RoutingWeights::nonzero : moelab::RoutingWeights::all);
    double accuracy = items.empty() ? 0.0 : static_cast<double>(correct) / items.size();
    summary = {{"questions", items.size()}, {"correct", correct}, {"accuracy", accuracy},
               {"routing_results", (out_dir / "routing_results.json").string()}};
    moelab::log::info("collect_routing: {} questions, {} answered correctly ({:.1f}%) -> successful set for RoMA", items.size(), correct,
                      100 * accuracy);
  }

 private:
  // Every rank's results in rank order (one-process order) and the correct count, on every rank.
  void gather(std::vector<moelab::RoutingResult>& results, long long& correct) const {
    nlohmann::json mine = nlohmann::json::array();
    for (const auto& r : results)
      mine.push_back({{"key", r.key}, {"input_text", r.input_text}, {"correct_answer", r.correct_answer}, {"is_correct", r.is_correct},
                      {"letters", r.letters}, {"routing", r.routing}, {"token_id", r.token_id}, {"token_text", r.token_text},
                      {"model_answer", r.model_answer}});
    results.clear();
    correct = 0;
    for (const auto& j : moelab::distributed::gather_list(mine, fmt::format("[{}] gathering the routing results", id_))) {
      moelab::RoutingResult r;
      r.key = j["key"].get<std::string>();
      r.input_text = j["input_text"].get<std::string>();
      r.correct_answer = j["correct_answer"].get<std::string>();
      r.is_correct = j["is_correct"].get<bool>();
      r.letters = j["letters"].get<std::vector<std::string>>();
      r.routing = j["routing"].get<std::map<int, std::vector<double>>>();
      r.token_id = j["token_id"].get<std::int64_t>();
      r.token_text = j["token_text"].get<std::string>();
      r.model_answer = j["model_answer"].get<std::string>();
      correct += r.is_correct;
      results.push_back(std::move(r));
    }
  }

  std::string id_;
  Settings settings_;
  std::shared_ptr<moelab::Dataset> dataset_;
  moelab::RunContext& context_;
};

}  // namespace

MOELAB_PLUGIN(options, CollectRouting)
