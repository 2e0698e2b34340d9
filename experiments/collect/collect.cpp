// Routing at scale: runs the model over several text sets, streams every token's routing in every MoE
// layer to chunk files (top-k ids and weights, per-token entropy and top-1 margin, optionally the full
// router softmax), with a token cap per set. With compare_with, the same tokens are collected again
// under a second state: a router checkpoint (base vs finetuned) or a quantized checkpoint (full vs
// quantized). Then the analyzers run on the records and index.html shows their numbers and figures.
// Also exports RoMA's routing-results JSON (last token of every document).
#include "moelab/moelab.h"
#include "moelab/lib/files.h"
#include "moelab/lib/log.h"
#include "moelab/lib/plot.h"
#include "moelab/lib/quantized_checkpoint.h"
#include "moelab/lib/router_checkpoint.h"
#include "moelab/lib/safetensors.h"
#include "moelab/lib/routing_results.h"

#include <chrono>
#include <numeric>

namespace {

namespace fs = std::filesystem;
using torch::Tensor;

enum class Precision { float16, float32 };

struct Settings {
  std::vector<std::string> sets, analyzers;
  long long max_tokens_per_set;
  std::size_t max_len, batch_tokens;
  long long chunk_tokens;
  bool full_probs;
  Precision precision;
  fs::path compare_with;
  bool export_routing_results;
};

const moelab::Options<Settings>& options() {
  static const auto o =
      moelab::Options<Settings>("collect", moelab::Kind::stage, "0.1.0", "streams per-token routing of text sets to disk, analyzes it, writes a report")
          .components("sets", &Settings::sets, moelab::Kind::dataset, "dataset tables of the text sets (each example's text is one document)")
          .components("analyzers", &Settings::analyzers, moelab::Kind::analyzer, "analyzer tables to run on the records, in order")
          .integer("max_tokens_per_set", &Settings::max_tokens_per_set, 100000, "stop reading a set after this many tokens (0: no cap)")
          .integer("max_len", &Settings::max_len, 512, "tokens per forward row; longer documents are cut into windows").at_least(1)
          .integer("batch_tokens", &Settings::batch_tokens, 16384, "tokens per forward (rows x longest row); short documents share a forward")
          .integer("chunk_tokens", &Settings::chunk_tokens, 65536, "tokens per chunk file")
          .flag("full_probs", &Settings::full_probs, false, "also record the full router softmax [tokens, layers, experts]")
          .choice("precision", &Settings::precision, Precision::float16, {{"float16", Precision::float16}, {"float32", Precision::float32}},
                  "stored precision of weights, probabilities, entropy and margin")
          .path("compare_with", &Settings::compare_with, "",
                "router checkpoint (\"@finetune/routers.safetensors\") or quantized checkpoint: collect the same tokens again under it")
          .flag("export_routing_results", &Settings::export_routing_results, true,
                "write routing_results.json (RoMA format: last token of each document, full softmax)");
  return o;
}

struct Window {
  int set = 0;
  std::size_t example = 0;
  std::vector<std::int64_t> ids;
  bool ends_document = false;
};

// Buffers routing rows on the host and writes them as numbered safetensors chunks.
class ChunkWriter {
 public:
  ChunkWriter(fs::path dir, long long chunk_tokens, torch::ScalarType dtype, nlohmann::json meta)
      : dir_(std::move(dir)), chunk_tokens_(chunk_tokens), dtype_(dtype), meta_(std::move(meta)) {
    fs::create_directories(dir_);
  }

  void add(std::map<std::string, Tensor> rows) {
    buffered_ += rows.begin()->second.size(0);
    for (auto& [name, t] : rows) buffer_[name].push_back(std::move(t));
    if (buffered_ >= chunk_tokens_) flush();
  }

  void flush() {
    if (buffered_ == 0) return;
    std::vector<std::pair<std::string, Tensor>> tensors;
    for (auto& [name, parts] : buffer_) tensors.emplace_back(name, torch::cat(parts));
    fs::path file = dir_ / fmt::format("chunk_{:05d}.safetensors", chunks_++);
    moelab::write_safetensors(file, tensors, {{"moelab", meta_.dump()}});
    bytes_ += static_cast<long long>(fs::file_size(file));
    tokens_ += buffered_;
    buffer_.clear();
    buffered_ = 0;
  }

  long long tokens() const { return tokens_ + buffered_; }
  long long bytes() const { return bytes_; }
  long long chunks() const { return chunks_; }
  torch::ScalarType dtype() const { return dtype_; }

 private:
  fs::path dir_;
  long long chunk_tokens_;
  torch::ScalarType dtype_;
  nlohmann::json meta_;
  std::map<std::string, std::vector<Tensor>> buffer_;
  long long buffered_ = 0, tokens_ = 0, bytes_ = 0, chunks_ = 0;
};

// Reads every chunk of a folder back into one set of records.
moelab::RoutingRecords load_records(const fs::path& dir) {
  std::vector<fs::path> files;
  for (const auto& entry : fs::directory_iterator(dir))
    if (entry.path().extension() == ".safetensors") files.push_back(entry.path());
  std::sort(files.begin(), files.end());
  if (files.empty()) throw std::runtime_error(fmt::format("{}: no routing chunks", dir.string()));
  std::map<std::string, std::vector<Tensor>> parts;
  for (const auto& file : files) {
    moelab::SafetensorsFile chunk(file);
    for (const auto& name : chunk.names()) parts[name].push_back(chunk.get(name).clone());
  }
  auto all = [&](const std::string& name, torch::ScalarType type) {
    return parts.count(name) ? torch::cat(parts[name]).to(type) : Tensor();
  };
  moelab::RoutingRecords r;
  r.topk_ids = all("topk_ids", torch::kInt64);
  r.topk_weights = all("topk_weights", torch::kFloat32);
  r.probs = all("probs", torch::kFloat32);
  r.entropy = all("entropy", torch::kFloat32);
  r.margin = all("margin", torch::kFloat32);
  r.set_ids = all("set_ids", torch::kInt64);
  return r;
}

class Collect final : public moelab::Stage {
 public:
  Collect(const moelab::Config& config, moelab::RunContext& context) : config_(config), settings_(options().read(config)), context_(context) {
    for (const auto& id : settings_.sets) sets_.push_back(context.make<moelab::Dataset>(id));
    if (sets_.empty()) throw std::runtime_error(fmt::format("[{}] sets ({}): list at least one dataset table", config.id(), config.where("sets")));
    for (const auto& id : settings_.analyzers) analyzers_.emplace_back(id, context.make<moelab::Analyzer>(id));
  }

  void run(const fs::path& out_dir, nlohmann::json& summary) override {
    moelab::Model& model = context_.model();
    std::vector<Window> windows = make_windows();
    const std::vector<std::string>& set_names = settings_.sets;
    nlohmann::json collection = nlohmann::json::object();
    collection["primary"] = collect_pass(model, windows, out_dir / "chunks" / "primary", "primary", out_dir);
    const std::string compare = settings_.compare_with.string();
    if (!compare.empty()) {
      // The second state: a router checkpoint, or a quantized checkpoint (full vs quantized).
      const std::filesystem::path file = context_.run_path(compare);
      const moelab::SafetensorsFile state(file);
      const bool quantized = state.metadata().count("moelab.kind") && state.metadata().at("moelab.kind") == "quantized_checkpoint";
      moelab::RestoreModelOnExit restore(model, /*experts=*/quantized);
      if (quantized) moelab::apply_quantized_checkpoint(file, model);
      else moelab::apply_router_checkpoint(file, model);
      collection["compare"] = collect_pass(model, windows, out_dir / "chunks" / "compare", "compare", {});
    }
    summary["collection"] = collection;
    summary["sets"] = set_names;

    moelab::RoutingRecords records = load_records(out_dir / "chunks" / "primary");
    fill_model_parts(model, records, set_names);
    moelab::RoutingRecords compared;
    if (!compare.empty()) {
      compared = load_records(out_dir / "chunks" / "compare");
      fill_model_parts(model, compared, set_names);
      records.compare = &compared;
    }
    nlohmann::json sections = nlohmann::json::array();
    sections.push_back({{"title", "Collection"},
                        {"text", fmt::format("{} tokens over the sets {}{}.", records.topk_ids.size(0), fmt::join(set_names, ", "),
                                             compare.empty() ? "" : fmt::format(", compared with router state {}", compare))},
                        {"numbers", {{"tokens", records.topk_ids.size(0)},
                                     {"tokens_per_second", collection["primary"]["tokens_per_second"]},
                                     {"disk_bytes_per_token", collection["primary"]["disk_bytes_per_token"]}}}});
    for (const auto& [id, analyzer] : analyzers_) {
      fs::path dir = out_dir / id;
      fs::create_directories(dir);
      moelab::log::info("collect: analyzer [{}] on {} tokens", id, records.topk_ids.size(0));
      nlohmann::json result = analyzer->analyze(records, dir);
      moelab::write_file_atomic(dir / "result.json", result.dump(2) + "\n");
      summary["analyses"][id] = scalars(result);
      context_.record_metrics({{"stage", config_.id()}, {"analyzer", id}, {"numbers", scalars(result)}});
      nlohmann::json figures = nlohmann::json::array();
      for (auto figure : result.value("figures", nlohmann::json::array())) {
        figure["file"] = id + "/" + figure["file"].get<std::string>();
        figures.push_back(figure);
      }
      sections.push_back({{"title", id}, {"numbers", scalars(result)}, {"figures", figures}});
    }
    moelab::write_report_html(out_dir / "index.html", fmt::format("Routing study: {}", context_.experiment_name()), sections);
    summary["report"] = (out_dir / "index.html").string();
    moelab::log::info("collect: report {}", (out_dir / "index.html").string());
  }

 private:
  // Each document is tokenized and cut into windows of max_len; a set stops at its token cap.
  std::vector<Window> make_windows() {
    const moelab::Tokenizer& tokenizer = context_.tokenizer();
    const std::size_t max_len = settings_.max_len;
    const long long cap = settings_.max_tokens_per_set;
    std::vector<Window> windows;
    for (std::size_t s = 0; s < sets_.size(); ++s) {
      long long taken = 0;
      for (std::size_t i = 0; i < sets_[s]->size() && (cap <= 0 || taken < cap); ++i) {
        std::vector<std::int64_t> ids = tokenizer.encode(sets_[s]->at(i).text);
        for (std::size_t start = 0; start < ids.size() && (cap <= 0 || taken < cap); start += max_len) {
          std::size_t n = std::min(max_len, ids.size() - start);
          if (cap > 0) n = std::min<std::size_t>(n, static_cast<std::size_t>(cap - taken));
          Window w{static_cast<int>(s), i, std::vector<std::int64_t>(ids.begin() + start, ids.begin() + start + n), start + n == ids.size()};
          taken += static_cast<long long>(n);
          windows.push_back(std::move(w));
        }
      }
      moelab::log::info("collect: set [{}]: {} tokens in {} documents", settings_.sets[s], taken, sets_[s]->size());
    }
    std::stable_sort(windows.begin(), windows.end(),
                     [](const Window& a, const Window& b) { return a.set != b.set ? a.set < b.set : a.ids.size() < b.ids.size(); });
    return windows;
  }

  // One pass over all windows; returns tokens, bytes and speed. With export_dir set, writes the routing-results JSON.
  nlohmann::json collect_pass(moelab::Model& model, const std::vector<Window>& windows, const fs::path& dir, const std::string& state,
                              const fs::path& export_dir) {
    torch::NoGradGuard no_grad;
    const bool full = settings_.full_probs;
    const torch::ScalarType dtype = settings_.precision == Precision::float32 ? torch::kFloat32 : torch::kFloat16;
    const long long k = model.info().top_k;
    nlohmann::json meta = {{"layers", model.info().moe_layers}, {"num_experts", model.info().num_experts}, {"top_k", k}, {"state", state},
                           {"sets", settings_.sets}};
    ChunkWriter writer(dir, settings_.chunk_tokens, dtype, meta);
    const bool do_export = !export_dir.empty() && settings_.export_routing_results;
    std::vector<moelab::RoutingResult> exported;
    // Windows are taken shortest first within each set (little padding; records keep set and token ids),
    // and batches fill a token budget (rows x longest row), so short documents share one forward.
    const std::size_t budget = std::max(settings_.batch_tokens, settings_.max_len);
    std::vector<std::pair<std::size_t, std::size_t>> batches;  // [start, end) of windows
    for (std::size_t start = 0, width = 0, end = 0; end <= windows.size(); ++end) {
      if (end == windows.size()) {
        if (end > start) batches.emplace_back(start, end);
        break;
      }
      const std::size_t wider = std::max(width, windows[end].ids.size());
      if (end > start && wider * (end - start + 1) > budget) {
        batches.emplace_back(start, end);
        start = end;
        width = windows[end].ids.size();
      } else {
        width = wider;
      }
    }
    const auto started = std::chrono::steady_clock::now();
    moelab::Progress progress("collect " + state, static_cast<long long>(batches.size()), "tokens");
    for (const auto& [start, end] : batches) {
      const std::size_t rows = end - start;
      std::size_t width = 0;
      for (std::size_t r = 0; r < rows; ++r) width = std::max(width, windows[start + r].ids.size());
      Tensor ids = torch::full({static_cast<long long>(rows), static_cast<long long>(width)}, static_cast<int64_t>(std::max<long long>(model.info().pad_token_id, 0)),
                               torch::kInt64);
      Tensor mask = torch::zeros_like(ids);
      Tensor set_ids = torch::empty({static_cast<long long>(rows), static_cast<long long>(width)}, torch::kInt16);
      for (std::size_t r = 0; r < rows; ++r) {
        const Window& w = windows[start + r];
        const auto n = static_cast<long long>(w.ids.size());
        ids[static_cast<long long>(r)].narrow(0, 0, n).copy_(torch::tensor(w.ids, torch::kInt64));
        mask[static_cast<long long>(r)].narrow(0, 0, n).fill_(1);
        set_ids[static_cast<long long>(r)].fill_(w.set);
      }
      model.forward(ids, mask, nullptr, /*last_only=*/true);
      Tensor real = mask.reshape(-1).nonzero().squeeze(1);
      Tensor real_device = real.to(model.device());
      // Among the real tokens, the last one of each window that ends a document (for the RoMA export).
      std::vector<int64_t> ending_rows, ending_windows;
      for (std::size_t r = 0, offset = 0; r < rows; offset += windows[start + r].ids.size(), ++r)
        if (do_export && windows[start + r].ends_document) {
          ending_rows.push_back(static_cast<int64_t>(offset + windows[start + r].ids.size() - 1));
          ending_windows.push_back(static_cast<int64_t>(start + r));
        }
      Tensor ending = torch::tensor(ending_rows, torch::kInt64).to(model.device());
      std::vector<Tensor> topk_ids, topk_weights, probs, entropy, margin, ending_probs;
      for (const auto& trace : model.routing()) {
        Tensor p = trace.logits.index_select(0, real_device).to(torch::kFloat32).softmax(-1);
        Tensor top2 = std::get<0>(p.topk(std::min<long long>(2, p.size(1)), -1));
        topk_ids.push_back(trace.topk_ids.index_select(0, real_device));
        topk_weights.push_back(trace.topk_weights.index_select(0, real_device).to(torch::kFloat32));
        entropy.push_back(-(p * p.clamp_min(1e-30).log()).sum(-1));
        margin.push_back(top2.size(1) > 1 ? top2.select(1, 0) - top2.select(1, 1) : top2.select(1, 0));
        if (full) probs.push_back(p);
        if (!ending_rows.empty()) ending_probs.push_back(p.index_select(0, ending));
      }
      std::map<std::string, Tensor> chunk = {
          {"topk_ids", torch::stack(topk_ids, 1).to(torch::kCPU, torch::kInt16)},
          {"topk_weights", torch::stack(topk_weights, 1).to(torch::kCPU, dtype)},
          {"entropy", torch::stack(entropy, 1).to(torch::kCPU, dtype)},
          {"margin", torch::stack(margin, 1).to(torch::kCPU, dtype)},
          {"token_ids", ids.reshape(-1).index_select(0, real).to(torch::kInt32)},
          {"set_ids", set_ids.reshape(-1).index_select(0, real)}};
      if (full) chunk["probs"] = torch::stack(probs, 1).to(torch::kCPU, dtype);  // [n, L, E]
      if (!ending_rows.empty()) export_last_tokens(windows, ending_windows, torch::stack(ending_probs, 1).cpu(), model, exported);
      const long long tokens = real.size(0), chunks_before = writer.chunks();
      writer.add(std::move(chunk));
      progress.advance(tokens, fmt::format("{} tokens", writer.tokens()));
      if (writer.chunks() > chunks_before) {  // one metrics line per chunk written, to watch a long run live
        const double elapsed = std::chrono::duration<double>(std::chrono::steady_clock::now() - started).count();
        context_.record_metrics({{"stage", config_.id()}, {"state", state}, {"chunks", writer.chunks()}, {"tokens", writer.tokens()},
                                 {"tokens_per_second", writer.tokens() / std::max(elapsed, 1e-9)}});
      }
    }
    writer.flush();
    progress.finish();
    const double seconds = std::chrono::duration<double>(std::chrono::steady_clock::now() - started).count();
    if (do_export) moelab::write_routing_results(export_dir / "routing_results.json", exported);
    nlohmann::json out = {{"tokens", writer.tokens()}, {"chunks", writer.chunks()}, {"disk_bytes", writer.bytes()},
                          {"disk_bytes_per_token", writer.tokens() ? static_cast<double>(writer.bytes()) / writer.tokens() : 0.0},
                          {"seconds", seconds}, {"tokens_per_second", writer.tokens() / std::max(seconds, 1e-9)}};
    context_.record_metrics({{"stage", config_.id()}, {"state", state}, {"chunks", writer.chunks()}, {"tokens", writer.tokens()},
                             {"tokens_per_second", out["tokens_per_second"]}});
    moelab::log::info("collect {}: {} tokens at {:.0f} tokens/s, {:.1f} bytes per token on disk", state, writer.tokens(),
                      out["tokens_per_second"].get<double>(), out["disk_bytes_per_token"].get<double>());
    return out;
  }

  // RoMA's routing-results entry for each document that ends in this batch: its last token's full softmax [L, E].
  void export_last_tokens(const std::vector<Window>& windows, const std::vector<int64_t>& ending_windows, const Tensor& probs,
                          moelab::Model& model, std::vector<moelab::RoutingResult>& exported) {
    for (std::size_t i = 0; i < ending_windows.size(); ++i) {
      const Window& w = windows[ending_windows[i]];
      const moelab::Example& ex = sets_[w.set]->at(w.example);
      Tensor p = probs[static_cast<int64_t>(i)].to(torch::kFloat64).contiguous();  // [L, E] on the host
      const double* values = p.data_ptr<double>();
      const int64_t experts = p.size(1);
      moelab::RoutingResult r;
      for (std::size_t l = 0; l < model.info().moe_layers.size(); ++l)
        r.routing[model.info().moe_layers[l]].assign(values + l * experts, values + (l + 1) * experts);
      r.set = settings_.sets[w.set];
      r.key = r.set + "/" + ex.id;
      r.input_text = ex.text;
      r.token_id = w.ids.back();
      r.token_text = context_.tokenizer().decode({r.token_id});
      r.correct_answer = ex.answer >= 0 ? ex.letters.at(ex.answer) : "";
      exported.push_back(std::move(r));
    }
  }

  void fill_model_parts(moelab::Model& model, moelab::RoutingRecords& records, const std::vector<std::string>& set_names) const {
    records.num_experts = model.info().num_experts;
    records.set_names = set_names;
    records.layers = model.info().moe_layers;
    for (int l : model.info().moe_layers) {
      records.routers.push_back(model.router_weight(l).detach());
      records.experts.push_back(model.expert_weights(l));
    }
  }

  // The top-level numbers of an analyzer's result, for the report table and the metrics log.
  static nlohmann::json scalars(const nlohmann::json& result) {
    nlohmann::json out = nlohmann::json::object();
    for (const auto& [key, value] : result.items())
      if (value.is_number() || value.is_string()) out[key] = value;
    return out;
  }

  moelab::Config config_;  // for id() and where() in messages
  Settings settings_;
  moelab::RunContext& context_;
  std::vector<std::shared_ptr<moelab::Dataset>> sets_;
  std::vector<std::pair<std::string, std::shared_ptr<moelab::Analyzer>>> analyzers_;
};

}  // namespace

MOELAB_PLUGIN(options, Collect)
