// Perplexity on held-out raw text: the text's token stream cut into consecutive windows of `seqlen`,
// exp of the mean next-token negative log-likelihood. With `routers`, the same windows are scored
// again under that router checkpoint (quantized vs recovered in one stage).
#include "moelab/moelab.h"
#include "moelab/lib/distributed.h"
#include "moelab/lib/calibration.h"
#include "moelab/lib/log.h"
#include "moelab/lib/router_checkpoint.h"

#include <cmath>

namespace {

using torch::Tensor;

struct Settings {
  std::string dataset;
  long long seqlen, max_windows, batch_size;
  std::filesystem::path routers;
  bool add_special_tokens;
};

const moelab::Options<Settings>& options() {
  static const auto o =
      moelab::Options<Settings>("perplexity", moelab::Kind::stage, "0.1.0", "perplexity on held-out raw text (base and finetuned routers)")
          .component("dataset", &Settings::dataset, moelab::Kind::dataset, "held-out raw text")
          .integer("seqlen", &Settings::seqlen, 2048, "tokens per window").at_least(2)
          .integer("max_windows", &Settings::max_windows, 0, "score at most this many windows (0: all)")
          .integer("batch_size", &Settings::batch_size, 4, "windows per forward").at_least(1)
          .path("routers", &Settings::routers, "", "router checkpoint to score as well (\"@recover/routers.safetensors\")")
          .flag("add_special_tokens", &Settings::add_special_tokens, true,
                "the stream starts with tokenizer.json's post_processor tokens, as HF's tokenizer(text) of the joined text (Llama 2: BOS)");
  return o;
}

class Perplexity final : public moelab::Stage {
 public:
  Perplexity(const moelab::Config& config, moelab::RunContext& context)
      : config_(config), settings_(options().read(config)), context_(context), dataset_(context.make<moelab::Dataset>(settings_.dataset)) {}

  void run(const std::filesystem::path&, nlohmann::json& summary) override {
    moelab::Model& model = context_.model();
    Tensor stream = moelab::token_stream(*dataset_, context_.tokenizer(), settings_.add_special_tokens);
    const long long seqlen = settings_.seqlen;
    long long count = stream.numel() / seqlen;
    if (settings_.max_windows > 0) count = std::min(count, settings_.max_windows);
    if (count == 0)
      throw std::runtime_error(fmt::format("[{}] the text has {} tokens, fewer than one window of seqlen = {} ({})", config_.id(), stream.numel(),
                                           seqlen, config_.where("seqlen")));
    Tensor windows = stream.narrow(0, 0, count * seqlen).view({count, seqlen});
    summary["windows"] = count;
    summary["seqlen"] = seqlen;
    summary["base"] = score(model, windows, "base");
    if (!settings_.routers.empty()) {
      moelab::RestoreModelOnExit restore(model, /*experts=*/false);
      moelab::apply_router_checkpoint(context_.run_path(settings_.routers), model);
      summary["finetuned"] = score(model, windows, "finetuned");
    }
  }

 private:
  nlohmann::json score(moelab::Model& model, const Tensor& windows, const char* label) {
    torch::NoGradGuard no_grad;
    const long long batch = settings_.batch_size;
    // torchrun: this rank scores its contiguous share of the batches; the batches' sums are gathered and
    // added in one-process order, so the result is the same to the last bit.
    const auto [b0, b1] = moelab::distributed::shard_range(static_cast<std::size_t>((windows.size(0) + batch - 1) / batch));
    nlohmann::json sums = nlohmann::json::array();
    moelab::Progress progress(fmt::format("perplexity ({})", label), static_cast<long long>(b1 - b0), "tokens");
    for (long long start = static_cast<long long>(b0) * batch; start < std::min<long long>(windows.size(0), static_cast<long long>(b1) * batch); start += batch) {
      Tensor ids = windows.narrow(0, start, std::min(batch, windows.size(0) - start));
      Tensor logp = model.forward(ids, {}).log_softmax(-1);
      Tensor targets = ids.narrow(1, 1, ids.size(1) - 1).to(logp.device());
      sums.push_back({logp.narrow(1, 0, ids.size(1) - 1).gather(2, targets.unsqueeze(2)).sum().item<double>(), targets.numel()});
      progress.advance(ids.numel());
    }
    progress.finish();
    double nll = 0;
    long long tokens = 0;
    for (const auto& s : moelab::distributed::gather_list(sums, fmt::format("[{}] gathering the log-likelihood sums", config_.id()))) {
      nll -= s[0].is_number() ? s[0].get<double>() : std::nan("");  // JSON writes NaN as null
      tokens += s[1].get<long long>();
    }
    const double ppl = std::exp(nll / static_cast<double>(tokens));
    moelab::log::result(fmt::format("[{}] perplexity:", config_.id()), fmt::format("{}: {:.4f} over {} predicted tokens", label, ppl, tokens));
    return {{"perplexity", ppl}, {"tokens", tokens}, {"mean_nll", nll / static_cast<double>(tokens)}};
  }

  moelab::Config config_;  // for id() and where() in messages
  Settings settings_;
  moelab::RunContext& context_;
  std::shared_ptr<moelab::Dataset> dataset_;
};

}  // namespace

MOELAB_PLUGIN(options, Perplexity)
