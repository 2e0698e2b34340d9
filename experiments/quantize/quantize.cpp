// Quantizes every routed expert's gate, up and down projections with the format its bit plan gives
// (or one format), by round-to-nearest or GPTQ. GPTQ runs layer by layer on calibration windows: the
// model's MoE input observer accumulates, for each expert, H = 2 X^T X / n over only the tokens routed
// to it: the gate/up inputs, then the down inputs recomputed after gate and up are quantized. Layer l's
// statistics see the layers before it already quantized. An expert that got no token falls back to RTN,
// with a warning. The model keeps the dequantized weights; quantized.safetensors keeps the packed
// codes, plan and config.
#include "moelab/moelab.h"
#include "moelab/lib/calibration.h"
#include "moelab/lib/files.h"
#include "moelab/lib/log.h"
#include "moelab/lib/quant.h"
#include "moelab/lib/quantized_checkpoint.h"

#include <torch/torch.h>

#include <chrono>

namespace {

using torch::Tensor;

struct StopForward {};  // thrown by the observer once the layer being calibrated has been seen


enum class Method { gptq, rtn };
const std::vector<std::pair<std::string, Method>> kMethods = {{"gptq", Method::gptq}, {"rtn", Method::rtn}};

struct Settings {
  std::filesystem::path plan;
  moelab::QuantFormat format;
  long long group_size;
  Method method;
  std::string calibration;
  long long nsamples, seqlen, batch_size;
  bool add_special_tokens;
  moelab::GptqOptions gptq;
};

const moelab::Options<moelab::GptqOptions>& gptq_options() {
  static const auto o = [] {
    const moelab::GptqOptions defaults;
    return moelab::Options<moelab::GptqOptions>()
        .real("damp", &moelab::GptqOptions::damp, defaults.damp, "GPTQ damping: share of the mean Hessian diagonal added to it")
        .flag("act_order", &moelab::GptqOptions::act_order, defaults.act_order, "GPTQ: quantize columns by decreasing Hessian diagonal")
        .integer("block_size", &moelab::GptqOptions::block_size, defaults.block_size, "GPTQ: columns per lazy batch update").at_least(1);
  }();
  return o;
}

const moelab::Options<Settings>& options() {
  static const auto o =
      moelab::Options<Settings>("quantize", moelab::Kind::stage, "0.1.0", "RTN or GPTQ quantization of the routed experts (INT3/INT4/MXFP4/MXFP8)")
          .path("plan", &Settings::plan, "", "bit plan (\"@plan/plan.json\"); empty: every expert matrix in `format`")
          .choice("format", &Settings::format, moelab::QuantFormat::int4, moelab::quant_format_names(), "the format when there is no plan")
          .integer("group_size", &Settings::group_size, 128, "INT formats: columns sharing a scale and zero point (MX blocks are 32)").at_least(1)
          .choice("method", &Settings::method, Method::gptq, kMethods, "GPTQ with calibration Hessians, or round-to-nearest")
          .optional_component("calibration", &Settings::calibration, moelab::Kind::dataset, "raw text for GPTQ's calibration windows")
          .integer("nsamples", &Settings::nsamples, 128, "calibration windows")
          .integer("seqlen", &Settings::seqlen, 2048, "tokens per calibration window")
          .integer("batch_size", &Settings::batch_size, 4, "calibration windows per forward").at_least(1)
          .flag("add_special_tokens", &Settings::add_special_tokens, true,
                "the calibration stream starts with tokenizer.json's post_processor tokens, as HF's tokenizer(text) of the joined text")
          .include(&Settings::gptq, gptq_options());
  return o;
}

class Quantize final : public moelab::Stage {
 public:
  Quantize(const moelab::Config& config, moelab::RunContext& context) : config_(config), settings_(options().read(config)), context_(context) {
    if (settings_.method == Method::gptq && settings_.calibration.empty())
      throw std::runtime_error(fmt::format("[{}] method = \"gptq\" needs calibration text: set calibration to a dataset table", config.id()));
    if (!settings_.calibration.empty()) calibration_ = context.make<moelab::Dataset>(settings_.calibration);
  }

  void run(const std::filesystem::path& out_dir, nlohmann::json& summary) override {
    moelab::Model& model = context_.model();
    torch::NoGradGuard no_grad;
    const bool gptq = settings_.method == Method::gptq;
    const std::string& method = moelab::choice_name(settings_.method, kMethods);
    nlohmann::json plan = read_plan();
    Tensor windows;
    if (gptq)
      windows = moelab::random_windows(moelab::token_stream(*calibration_, context_.tokenizer(), settings_.add_special_tokens),
                                       settings_.nsamples, settings_.seqlen,
                                       context_.seed_for(config_.id() + ".calibration"),
                                       fmt::format("[{}] calibration", config_.id()));
    moelab::QuantizedCheckpoint checkpoint;
    std::map<std::string, long long> counts;
    long long fallbacks = 0, elements = 0;
    const auto started = std::chrono::steady_clock::now();
    const auto& layers = model.info().moe_layers;
    const long long experts = model.info().num_experts;
    moelab::Progress progress(fmt::format("quantize ({}) expert matrices", method), static_cast<long long>(layers.size()) * 3 * experts,
                              "matrices");
    for (int layer : layers) {
      const auto layer_started = std::chrono::steady_clock::now();
      moelab::ExpertWeights ex = model.expert_weights(layer);
      Tensor sums, tokens;  // per-expert input statistics of the projections being quantized
      nlohmann::json errors = nlohmann::json::object();
      Tensor* stacks[3] = {&ex.gate, &ex.up, &ex.down};
      for (int p = 0; p < 3; ++p) {
        // gate and up read the layer input; down reads the intermediate activations, recomputed after gate
        // and up are quantized (GPTQ's sequential order inside a layer).
        if (gptq && p != 1) sums = calibrate(model, layer, ex, windows, /*down_inputs=*/p == 2, tokens);
        std::map<std::string, std::vector<int64_t>> by_format;
        for (int64_t e = 0; e < model.info().num_experts; ++e)
          by_format[plan.at(fmt::format("{}{}.{}.weight", ex.prefix, e, ex.names[p])).get<std::string>()].push_back(e);
        double err = 0, norm = 0;
        for (const auto& [format, experts] : by_format) {
          moelab::QuantSpec spec{moelab::quant_format(format), settings_.group_size};
          std::vector<int64_t> with_tokens, without;
          for (int64_t e : experts) (!gptq || tokens[e].item<int64_t>() > 0 ? with_tokens : without).push_back(e);
          for (int64_t e : without)
            moelab::log::warn_once("quantize.no_calibration_tokens",
                                   "quantize: layer {} expert {} received no calibration token; its {} falls back to RTN (the summary "
                                   "counts these as rtn_fallbacks)", layer, e, ex.names[p]);
          fallbacks += static_cast<long long>(without.size());
          for (bool use_gptq : {true, false}) {
            const auto& group = use_gptq ? with_tokens : without;
            if (group.empty()) continue;
            Tensor index = torch::tensor(group, torch::kInt64).to(stacks[p]->device());
            Tensor w = stacks[p]->index_select(0, index).to(torch::kFloat32);
            moelab::GptqResult r;
            if (gptq && use_gptq) {
              Tensor count = tokens.to(index.device()).index_select(0, index).to(torch::kFloat32).view({-1, 1, 1});
              Tensor h = sums.index_select(0, index) * (2.0 / count);
              r = moelab::gptq_quantize(w, h, spec, settings_.gptq);
            } else {
              r.grids = moelab::fit_grids(w, spec);
              r.q = moelab::fake_quantize(w, r.grids, spec);
            }
            err += (r.q - w).pow(2).sum().item<double>();
            norm += w.pow(2).sum().item<double>();
            stacks[p]->index_copy_(0, index, r.q.to(stacks[p]->scalar_type()));
            for (std::size_t i = 0; i < group.size(); ++i) {
              const auto row = static_cast<int64_t>(i);
              moelab::QuantGrids grids{r.grids.scale[row], r.grids.zero.defined() ? r.grids.zero[row] : Tensor()};
              checkpoint.matrices.push_back({fmt::format("{}{}.{}.weight", ex.prefix, group[i], ex.names[p]), moelab::pack(r.q[row], grids, spec)});
            }
            counts[format] += static_cast<long long>(group.size());
            elements += w.numel();
          }
        }
        errors[ex.names[p]] = std::sqrt(err / std::max(norm, 1e-300));
        progress.advance_steps(experts, experts, fmt::format("layer {} {}: relative error {:.4f}", layer, ex.names[p], errors[ex.names[p]].get<double>()));
      }
      const double seconds = std::chrono::duration<double>(std::chrono::steady_clock::now() - layer_started).count();
      context_.record_metrics({{"stage", config_.id()}, {"layer", layer}, {"seconds", seconds}, {"relative_weight_error", errors}});
    }
    progress.finish();
    long long packed = 0;
    for (const auto& m : checkpoint.matrices) packed += m.packed.bytes();
    nlohmann::json quantization = {{"method", method}, {"group_size", settings_.group_size}, {"damp", settings_.gptq.damp},
                                   {"act_order", settings_.gptq.act_order}, {"block_size", settings_.gptq.block_size},
                                   {"nsamples", settings_.nsamples}, {"seqlen", settings_.seqlen}, {"seed", context_.seed()}};
    checkpoint.metadata = {{"plan", plan}, {"quantization", quantization}};
    const std::filesystem::path file = out_dir / "quantized.safetensors";
    moelab::save_quantized_checkpoint(file, model, checkpoint);
    const double seconds = std::chrono::duration<double>(std::chrono::steady_clock::now() - started).count();
    summary = {{"method", method}, {"matrices", checkpoint.matrices.size()}, {"formats", counts},
               {"packed_bytes", packed}, {"bf16_bytes", 2 * elements}, {"bits_per_weight", 8.0 * packed / static_cast<double>(elements)},
               {"rtn_fallbacks", fallbacks}, {"seconds", seconds}, {"checkpoint", file.string()}, {"quantization", quantization}};
    moelab::log::info("quantize: {} expert matrices in {:.1f}s; {:.1f} MB packed vs {:.1f} MB in bf16 ({:.2f} bits per weight); {} RTN fallbacks",
                      checkpoint.matrices.size(), seconds, packed / 1e6, 2e-6 * elements, summary["bits_per_weight"].get<double>(), fallbacks);
  }

 private:
  // Every expert matrix's format: from the plan file, or the one `format`.
  nlohmann::json read_plan() {
    moelab::Model& model = context_.model();
    nlohmann::json formats = nlohmann::json::object();
    const std::string plan = settings_.plan.string();
    if (!plan.empty()) {
      std::filesystem::path file = context_.run_path(plan);
      const nlohmann::json j = moelab::read_json(file);
      if (!j.is_object() || !j.contains("formats") || !j["formats"].is_object())
        throw std::runtime_error(fmt::format("[{}] plan ({}): {} has no \"formats\" object (a bit_plan stage writes one)", config_.id(),
                                             config_.where("plan"), file.string()));
      formats = j["formats"];
      for (const auto& [name, f] : formats.items()) {
        try {
          moelab::quant_format(f.is_string() ? f.get<std::string>() : f.dump());
        } catch (const std::exception& e) {
          throw std::runtime_error(fmt::format("{}: \"{}\": {}", file.string(), name, e.what()));
        }
      }
    }
    for (int layer : model.info().moe_layers) {
      moelab::ExpertWeights ex = model.expert_weights(layer);
      for (long long e = 0; e < model.info().num_experts; ++e)
        for (const auto& p : ex.names) {
          std::string name = fmt::format("{}{}.{}.weight", ex.prefix, e, p);
          if (plan.empty()) formats[name] = moelab::quant_format_name(settings_.format);
          else if (!formats.contains(name)) throw std::runtime_error(fmt::format("[{}] plan {} has no format for {}", config_.id(), plan, name));
        }
    }
    return formats;
  }

  // Per-expert sums of x x^T over the tokens routed to it ([E, H, H] of the layer input, or with
  // down_inputs [E, I, I] of silu(x G^T) * (x U^T) with the current gate and up weights); tokens [E] counts
  // them (host). Forwards stop right after `layer`.
  Tensor calibrate(moelab::Model& model, int layer, const moelab::ExpertWeights& ex, const Tensor& windows, bool down_inputs, Tensor& tokens) {
    const int64_t E = ex.gate.size(0), I = ex.gate.size(1), H = ex.gate.size(2), k = model.info().top_k;
    const int64_t C = down_inputs ? I : H;
    Tensor sums = torch::zeros({E, C, C}, torch::TensorOptions().dtype(torch::kFloat32).device(model.device()));
    tokens = torch::zeros({E}, torch::kInt64);
    model.set_moe_input_observer([&](int l, const Tensor& x, const Tensor& ids) {
      if (l != layer) return;
      Tensor xf = x.to(torch::kFloat32), flat = ids.reshape(-1), order = flat.argsort();
      Tensor token_of = order.div(k, "floor");
      Tensor count = torch::bincount(flat, {}, E).cpu();
      int64_t start = 0;
      for (int64_t e = 0; e < E; ++e) {
        const int64_t c = count[e].item<int64_t>();
        if (c == 0) continue;
        Tensor xe = xf.index_select(0, token_of.narrow(0, start, c));
        if (down_inputs) xe = torch::silu(xe.matmul(ex.gate[e].to(torch::kFloat32).t())) * xe.matmul(ex.up[e].to(torch::kFloat32).t());
        sums[e].addmm_(xe.t(), xe);
        tokens[e] += c;
        start += c;
      }
      throw StopForward{};
    });
    const int64_t batch = settings_.batch_size;
    try {
      for (int64_t start = 0; start < windows.size(0); start += batch) {
        try {
          model.forward(windows.narrow(0, start, std::min<int64_t>(batch, windows.size(0) - start)), {}, nullptr, /*last_only=*/true);
        } catch (const StopForward&) {
        }
      }
    } catch (...) {
      model.set_moe_input_observer({});
      throw;
    }
    model.set_moe_input_observer({});
    return sums;
  }

  moelab::Config config_;  // for id() and where() in messages and seeds
  Settings settings_;
  moelab::RunContext& context_;
  std::shared_ptr<moelab::Dataset> calibration_;
};

}  // namespace

MOELAB_PLUGIN(options, Quantize)
