// Perplexity on held-out raw text: the text's token stream cut into consecutive windows of `seqlen`,
// exp of the mean next-token negative log-likelihood. With `routers`, the same windows are scored
// again under that router checkpoint (quantized vs recovered in one stage).
#include "moelab/moelab.h"

#include <cmath>

namespace {

using torch::Tensor;

class Perplexity final : public moelab::Stage {
 public:
  Perplexity(const moelab::Config& config, moelab::RunContext& context)
      : config_(config), context_(context), dataset_(context.make<moelab::Dataset>(config.get_string("dataset"))) {}

  void run(const std::filesystem::path&, nlohmann::json& summary) override {
    moelab::Model& model = context_.model();
    Tensor stream = moelab::token_stream(*dataset_, context_.tokenizer());
    const long long seqlen = config_.get_int("seqlen");
    long long count = stream.numel() / seqlen;
    if (config_.get_int("max_windows") > 0) count = std::min(count, config_.get_int("max_windows"));
    if (count == 0)
      throw std::runtime_error(fmt::format("[{}] the text has {} tokens, fewer than one window of seqlen = {} ({})", config_.id(), stream.numel(),
                                           seqlen, config_.where("seqlen")));
    Tensor windows = stream.narrow(0, 0, count * seqlen).view({count, seqlen});
    summary["windows"] = count;
    summary["seqlen"] = seqlen;
    summary["base"] = score(model, windows, "base");
    const std::string routers = config_.get_string("routers");
    if (!routers.empty()) {
      moelab::RestoreModelOnExit restore(model, /*experts=*/false);
      moelab::apply_router_checkpoint(context_.run_path(routers), model);
      summary["finetuned"] = score(model, windows, "finetuned");
    }
  }

 private:
  nlohmann::json score(moelab::Model& model, const Tensor& windows, const char* label) {
    torch::NoGradGuard no_grad;
    const long long batch = config_.get_int("batch_size");
    double nll = 0;
    long long tokens = 0;
    moelab::Progress progress(fmt::format("perplexity ({})", label), (windows.size(0) + batch - 1) / batch, "tokens");
    for (long long start = 0; start < windows.size(0); start += batch) {
      Tensor ids = windows.narrow(0, start, std::min(batch, windows.size(0) - start));
      Tensor logp = model.forward(ids, {}).log_softmax(-1);
      Tensor targets = ids.narrow(1, 1, ids.size(1) - 1).to(logp.device());
      nll -= logp.narrow(1, 0, ids.size(1) - 1).gather(2, targets.unsqueeze(2)).sum().item<double>();
      tokens += targets.numel();
      progress.advance(ids.numel());
    }
    progress.finish();
    const double ppl = std::exp(nll / static_cast<double>(tokens));
    moelab::log::info("perplexity [{}]: {:.4f} over {} predicted tokens", label, ppl, tokens);
    return {{"perplexity", ppl}, {"tokens", tokens}, {"mean_nll", nll / static_cast<double>(tokens)}};
  }

  moelab::Config config_;
  moelab::RunContext& context_;
  std::shared_ptr<moelab::Dataset> dataset_;
};

moelab::Descriptor describe() {
  return moelab::Descriptor("perplexity", moelab::Kind::stage, "0.1.0", "perplexity on held-out raw text (base and finetuned routers)")
      .component("dataset", moelab::Kind::dataset, "", "held-out raw text")
      .integer("seqlen", 2048, "tokens per window")
      .integer("max_windows", 0, "score at most this many windows (0: all)")
      .integer("batch_size", 4, "windows per forward")
      .path("routers", "", "router checkpoint to score as well (\"@recover/routers.safetensors\")");
}

}  // namespace

MOELAB_PLUGIN(describe, Perplexity)
