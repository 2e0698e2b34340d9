// Routing at scale: runs the model over several text sets, streams every token's routing in every MoE
// layer to chunk files (top-k ids and weights, per-token entropy and top-1 margin, optionally the full
// router softmax), with a token cap per set. With compare_with, the same tokens are collected again
// under a second state: a router checkpoint (base vs finetuned) or a quantized checkpoint (full vs
// quantized). Then the analyzers run on the records and index.html shows their numbers and figures.
// Also exports RoMA's routing-results JSON (last token of every document).
// Per forward, the records are computed on the device for all tokens and layers at once and copied to
// the host in one go; with async, the copy runs on a side stream into pinned memory while the next
// forward runs, and a writer thread writes the chunk files behind a bounded queue.
#include "moelab/moelab.h"
#include "moelab/lib/distributed.h"
#include "moelab/lib/files.h"
#include "moelab/lib/log.h"
#include "moelab/lib/plot.h"
#include "moelab/lib/quantized_checkpoint.h"
#include "moelab/lib/router_checkpoint.h"
#include "moelab/lib/safetensors.h"
#include "moelab/lib/routing_results.h"

#include <c10/core/Event.h>
#include <c10/core/StreamGuard.h>
#include <c10/core/impl/VirtualGuardImpl.h>

#include <chrono>
#include <condition_variable>
#include <deque>
#include <mutex>
#include <numeric>
#include <optional>
#include <thread>

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
  bool async;
  std::size_t async_queue;
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
                "write routing_results.json (RoMA format: last token of each document, full softmax)")
          .flag("async", &Settings::async, true,
                "copy each forward's records to pinned host memory on a side stream while the next forward runs, and write chunks "
                "on a writer thread (false: copy and write between forwards; the files are the same)")
          .integer("async_queue", &Settings::async_queue, 4, "forwards of records that may wait for the writer thread").at_least(1);
  return o;
}

struct Window {
  int set = 0;
  std::size_t example = 0;
  std::vector<std::int64_t> ids;
  bool ends_document = false;
};

// Buffers routing rows on the host and writes them as numbered safetensors chunks. Each chunk written is
// also noted for take_written(), which another thread may call.
class ChunkWriter {
 public:
  struct Written {
    long long chunks, tokens;
  };

  ChunkWriter(fs::path dir, long long chunk_tokens, nlohmann::json meta)
      : dir_(std::move(dir)), chunk_tokens_(chunk_tokens), meta_(std::move(meta)) {
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
    // torchrun: each rank writes the chunks of its share of the forwards; the names sort in one-process order.
    // Without data sharding (expert placement) every rank ran every forward, and rank 0 alone writes them.
    const bool sharded = moelab::distributed::data_parallel() && moelab::distributed::world_size() > 1;
    const fs::path file = dir_ / (sharded ? fmt::format("chunk_r{:03d}_{:05d}.safetensors", moelab::distributed::rank(), chunks_)
                                          : fmt::format("chunk_{:05d}.safetensors", chunks_));
    try {
      if (moelab::distributed::data_parallel() || moelab::distributed::is_main()) {
        moelab::write_safetensors(file, tensors, {{"moelab", meta_.dump()}});
        bytes_ += static_cast<long long>(fs::file_size(file));
      }
    } catch (const std::exception& e) {
      throw std::runtime_error(fmt::format("collect: cannot write the routing chunk {}: {}", file.string(), e.what()));
    }
    ++chunks_;
    tokens_ += buffered_;
    buffer_.clear();
    buffered_ = 0;
    std::lock_guard lock(written_mutex_);
    written_.push_back({chunks_, tokens_});
  }

  // The chunks written since the last call.
  std::vector<Written> take_written() {
    std::lock_guard lock(written_mutex_);
    return std::exchange(written_, {});
  }

  long long tokens() const { return tokens_ + buffered_; }
  long long bytes() const { return bytes_; }
  long long chunks() const { return chunks_; }

 private:
  fs::path dir_;
  long long chunk_tokens_;
  nlohmann::json meta_;
  std::map<std::string, std::vector<Tensor>> buffer_;
  long long buffered_ = 0, tokens_ = 0, bytes_ = 0, chunks_ = 0;
  std::mutex written_mutex_;
  std::vector<Written> written_;
};

// Runs a ChunkWriter on its own thread behind a queue of at most `depth` forwards' records, so the
// forward loop waits for the disk only when the queue is full. The writer's error (naming the chunk
// file) is rethrown by the next add() or by finish().
class WriterThread {
 public:
  WriterThread(ChunkWriter& writer, std::size_t depth) : writer_(writer), depth_(depth), thread_([this] { loop(); }) {}
  WriterThread(const WriterThread&) = delete;
  WriterThread& operator=(const WriterThread&) = delete;
  ~WriterThread() { stop(/*drop_queued=*/true); }

  void add(std::map<std::string, Tensor> rows) {
    std::unique_lock lock(mutex_);
    has_space_.wait(lock, [&] { return queue_.size() < depth_ || error_; });
    if (error_) std::rethrow_exception(error_);
    queue_.push_back(std::move(rows));
    has_work_.notify_one();
  }

  // Writes everything queued, then the last partial chunk.
  void finish() {
    stop(/*drop_queued=*/false);
    if (error_) std::rethrow_exception(error_);
    writer_.flush();
  }

 private:
  void loop() {
    for (;;) {
      std::map<std::string, Tensor> rows;
      {
        std::unique_lock lock(mutex_);
        has_work_.wait(lock, [&] { return !queue_.empty() || stopping_; });
        if (queue_.empty()) return;
        rows = std::move(queue_.front());
        queue_.pop_front();
      }
      has_space_.notify_one();
      try {
        writer_.add(std::move(rows));
      } catch (...) {
        std::lock_guard lock(mutex_);
        error_ = std::current_exception();
        queue_.clear();
        has_space_.notify_all();
        return;
      }
    }
  }

  void stop(bool drop_queued) {
    {
      std::lock_guard lock(mutex_);
      stopping_ = true;
      if (drop_queued) queue_.clear();
    }
    has_work_.notify_all();
    if (thread_.joinable()) thread_.join();
  }

  ChunkWriter& writer_;
  const std::size_t depth_;
  std::mutex mutex_;
  std::condition_variable has_work_, has_space_;
  std::deque<std::map<std::string, Tensor>> queue_;
  bool stopping_ = false;
  std::exception_ptr error_;
  std::thread thread_;  // last: starts once the members above exist
};

// Waits for the work queued on the device's current stream (nothing to wait for on the CPU).
void wait_for_device(torch::Device device) {
  if (device.is_cpu()) return;
  c10::impl::VirtualGuardImpl(device.type()).getStream(device).synchronize();
}

// Moves one forward's records from the device to the host. Async on an accelerator: the copies run on
// a side stream, after the records' computation, into pinned memory, and return at once; wait() blocks
// until they have landed. On the CPU, or with async off, a plain copy that has landed on return.
class RecordCopier {
 public:
  RecordCopier(torch::Device device, bool async) : device_(device) {
    if (async && !device.is_cpu()) {
      side_ = c10::impl::VirtualGuardImpl(device.type()).getStreamFromGlobalPool(device);
      computed_.emplace(device.type());
    }
  }

  ~RecordCopier() {  // on an error in the loop: the device memory is not freed under a running copy
    try {
      wait();
    } catch (...) {
    }
  }

  std::map<std::string, Tensor> copy(const std::map<std::string, Tensor>& on_device) {
    std::map<std::string, Tensor> host;
    if (!side_) {
      for (const auto& [name, t] : on_device) host[name] = t.to(torch::kCPU);
      return host;
    }
    computed_->record(c10::impl::VirtualGuardImpl(device_.type()).getStream(device_));
    computed_->block(*side_);
    c10::StreamGuard on_side(*side_);
    for (const auto& [name, t] : on_device) {
      host[name] = torch::empty(t.sizes(), torch::TensorOptions().dtype(t.scalar_type()).pinned_memory(true));
      host[name].copy_(t, /*non_blocking=*/true);
    }
    in_flight_ = on_device;  // the device memory stays ours until the copies have read it
    return host;
  }

  void wait() {
    if (side_) side_->synchronize();
    in_flight_.clear();
  }

 private:
  torch::Device device_;
  std::optional<c10::Stream> side_;
  std::optional<c10::Event> computed_;
  std::map<std::string, Tensor> in_flight_;
};

// The records of one forward for its real tokens (flat row-major positions `real`), every MoE layer at
// once, on the model's device: top-k ids (int16) and weights, entropy and top-1 margin of the router
// softmax, optionally the softmax itself; `ending` picks rows whose full softmax goes to the RoMA export.
std::map<std::string, Tensor> device_records(const std::vector<moelab::RouterTrace>& traces, const Tensor& real, const Tensor& ending,
                                             torch::ScalarType dtype, bool full) {
  std::vector<Tensor> logits, ids, weights;
  for (const auto& trace : traces) {
    logits.push_back(trace.logits);
    ids.push_back(trace.topk_ids);
    weights.push_back(trace.topk_weights);
  }
  const bool padded = real.size(0) < traces.front().logits.size(0);
  auto real_rows = [&](const Tensor& t) { return padded ? t.index_select(0, real) : t; };
  Tensor p = real_rows(torch::stack(logits, 1)).to(torch::kFloat32).softmax(-1);  // [n, L, E]
  Tensor top2 = std::get<0>(p.topk(std::min<long long>(2, p.size(-1)), -1));
  Tensor margin = top2.size(-1) > 1 ? top2.select(-1, 0) - top2.select(-1, 1) : top2.select(-1, 0);
  std::map<std::string, Tensor> out = {{"topk_ids", real_rows(torch::stack(ids, 1)).to(torch::kInt16)},
                                       {"topk_weights", real_rows(torch::stack(weights, 1)).to(torch::kFloat32).to(dtype)},
                                       {"entropy", (-(p * p.clamp_min(1e-30).log()).sum(-1)).to(dtype)},
                                       {"margin", margin.to(dtype)}};
  if (full) out["probs"] = p.to(dtype);
  if (ending.defined()) out["ending_probs"] = p.index_select(0, ending);
  return out;
}

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
    // A forward must hold the longest window; silently raising the budget to max_len once left a benchmark
    // with batch_tokens = 512 at forwards of max_len tokens.
    if (settings_.batch_tokens < settings_.max_len)
      throw std::runtime_error(fmt::format("[{}] batch_tokens ({}): {} tokens per forward is below max_len = {} ({}), the longest window; "
                                           "set batch_tokens to at least max_len",
                                           config.id(), config.where("batch_tokens"), settings_.batch_tokens, settings_.max_len,
                                           config.where("max_len")));
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
    if (!moelab::distributed::is_main()) return;  // torchrun: rank 0 analyzes every rank's chunks and writes the report

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
    // Length order within each set, so a forward's rows are about as long as its longest (little padding):
    // shortest first in even sets, longest first in odd ones, so the forward that straddles two sets joins
    // windows of like length too.
    std::stable_sort(windows.begin(), windows.end(), [](const Window& a, const Window& b) {
      if (a.set != b.set) return a.set < b.set;
      return a.set % 2 == 0 ? a.ids.size() < b.ids.size() : a.ids.size() > b.ids.size();
    });
    return windows;
  }

  // One pass over all windows; returns tokens, bytes, forwards and speed (of the pass, and of its forwards
  // alone). With export_dir set, writes the routing-results JSON.
  nlohmann::json collect_pass(moelab::Model& model, const std::vector<Window>& windows, const fs::path& dir, const std::string& state,
                              const fs::path& export_dir) {
    torch::NoGradGuard no_grad;
    const bool full = settings_.full_probs;
    const torch::ScalarType dtype = settings_.precision == Precision::float32 ? torch::kFloat32 : torch::kFloat16;
    nlohmann::json meta = {{"layers", model.info().moe_layers}, {"num_experts", model.info().num_experts}, {"top_k", model.info().top_k},
                           {"state", state}, {"sets", settings_.sets}};
    ChunkWriter writer(dir, settings_.chunk_tokens, meta);
    std::optional<WriterThread> writer_thread;
    if (settings_.async) writer_thread.emplace(writer, settings_.async_queue);
    RecordCopier copier(model.device(), settings_.async);
    const bool do_export = !export_dir.empty() && settings_.export_routing_results;
    std::vector<moelab::RoutingResult> exported;
    const std::vector<Batch> batches = plan_batches(windows);
    moelab::log::info("collect {}: {} windows in {} forwards of at most {} tokens (batch_tokens)", state, windows.size(), batches.size(),
                      settings_.batch_tokens);

    const auto started = std::chrono::steady_clock::now();
    double forward_seconds = 0;
    long long tokens = 0, slots = 0;
    moelab::Progress progress("collect " + state, static_cast<long long>(batches.size()), "tokens");
    // One chunk's metrics line per chunk written, to watch a long run live.
    auto record_written = [&] {
      for (const auto& w : writer.take_written()) {
        const double elapsed = std::chrono::duration<double>(std::chrono::steady_clock::now() - started).count();
        context_.record_metrics({{"stage", config_.id()}, {"state", state}, {"chunks", w.chunks}, {"tokens", w.tokens},
                                 {"tokens_per_second", w.tokens / std::max(elapsed, 1e-9)}});
      }
    };
    // A forward whose records are on their way to the host: handed to the writer once they have landed.
    struct Pending {
      std::map<std::string, Tensor> rows;
      std::vector<int64_t> ending_windows;
    };
    std::optional<Pending> pending;
    auto hand_over = [&] {
      copier.wait();
      if (pending->rows.count("ending_probs")) {
        export_last_tokens(windows, pending->ending_windows, pending->rows.at("ending_probs"), model, exported);
        pending->rows.erase("ending_probs");
      }
      if (writer_thread) writer_thread->add(std::move(pending->rows));
      else writer.add(std::move(pending->rows));
      pending.reset();
      record_written();
    };
    // torchrun: this rank runs its contiguous share of the forwards (the same forwards as one process).
    const auto [b0, b1] = moelab::distributed::shard_range(batches.size());
    for (std::size_t b = b0; b < b1; ++b) {
      const Batch& batch = batches[b];
      ForwardInput in = forward_input(windows, batch, model.info().pad_token_id, do_export);
      const auto forward_started = std::chrono::steady_clock::now();
      model.forward(in.ids, in.mask, nullptr, /*last_only=*/true);
      wait_for_device(model.device());  // so forward_seconds holds the forwards' device time (the copies run on their own stream)
      forward_seconds += std::chrono::duration<double>(std::chrono::steady_clock::now() - forward_started).count();
      Tensor ending = in.ending_rows.empty() ? Tensor() : torch::tensor(in.ending_rows, torch::kInt64).to(model.device());
      std::map<std::string, Tensor> records = device_records(model.routing(), in.real.to(model.device()), ending, dtype, full);
      if (pending) hand_over();  // the previous forward's copy ran while this forward did
      pending = Pending{copier.copy(records), std::move(in.ending_windows)};
      pending->rows["token_ids"] = std::move(in.token_ids);
      pending->rows["set_ids"] = std::move(in.set_ids);
      tokens += in.real.size(0);
      slots += in.ids.numel();
      progress.advance(in.real.size(0), fmt::format("{} tokens", tokens));
    }
    if (pending) hand_over();
    if (writer_thread) writer_thread->finish();
    else writer.flush();
    record_written();
    progress.finish();
    long long all_tokens = writer.tokens(), all_chunks = writer.chunks(), all_bytes = writer.bytes();
    if (moelab::distributed::active()) {  // every rank's counts, and its exported documents in one-process order
      nlohmann::json mine = nlohmann::json::array();
      for (const auto& r : exported)
        mine.push_back({r.key, r.set, r.input_text, r.token_id, r.token_text, r.correct_answer, r.routing});
      const std::vector<nlohmann::json> all = moelab::distributed::all_gather_json(
          {{"tokens", writer.tokens()}, {"chunks", writer.chunks()}, {"bytes", writer.bytes()}, {"slots", slots}, {"real", tokens},
           {"forward_seconds", forward_seconds}, {"exported", do_export ? mine : nlohmann::json::array()}},
          fmt::format("[{}] gathering the {} collection", config_.id(), state));
      all_tokens = all_chunks = all_bytes = tokens = slots = 0;
      exported.clear();
      for (const auto& part : all) {
        all_tokens += part["tokens"].get<long long>();
        all_chunks += part["chunks"].get<long long>();
        all_bytes += part["bytes"].get<long long>();
        tokens += part["real"].get<long long>();
        slots += part["slots"].get<long long>();
        forward_seconds = std::max(forward_seconds, part["forward_seconds"].get<double>());
        for (const auto& e : part["exported"]) {
          moelab::RoutingResult r;
          r.key = e[0].get<std::string>();
          r.set = e[1].get<std::string>();
          r.input_text = e[2].get<std::string>();
          r.token_id = e[3].get<std::int64_t>();
          r.token_text = e[4].get<std::string>();
          r.correct_answer = e[5].get<std::string>();
          r.routing = e[6].get<std::map<int, std::vector<double>>>();
          exported.push_back(std::move(r));
        }
      }
    }
    const double seconds = std::chrono::duration<double>(std::chrono::steady_clock::now() - started).count();
    if (do_export && moelab::distributed::is_main()) moelab::write_routing_results(export_dir / "routing_results.json", exported);
    const auto forwards = static_cast<long long>(batches.size());
    nlohmann::json out = {{"tokens", all_tokens}, {"chunks", all_chunks}, {"disk_bytes", all_bytes},
                          {"disk_bytes_per_token", all_tokens ? static_cast<double>(all_bytes) / all_tokens : 0.0},
                          {"seconds", seconds}, {"tokens_per_second", all_tokens / std::max(seconds, 1e-9)},
                          {"forwards", forwards}, {"batch_tokens", settings_.batch_tokens},
                          {"mean_tokens_per_forward", forwards ? static_cast<double>(tokens) / forwards : 0.0},
                          {"padding_share", slots ? 1.0 - static_cast<double>(tokens) / slots : 0.0},
                          {"forward_seconds", forward_seconds}, {"forward_tokens_per_second", tokens / std::max(forward_seconds, 1e-9)},
                          {"async", settings_.async}};
    context_.record_metrics({{"stage", config_.id()}, {"state", state}, {"chunks", all_chunks}, {"tokens", all_tokens},
                             {"tokens_per_second", out["tokens_per_second"]}, {"forwards", forwards}, {"forward_seconds", forward_seconds}});
    moelab::log::info("collect {}: {} tokens at {:.0f} tokens/s ({:.1f} s; the forwards alone {:.1f} s, {:.0f} tokens/s), {} forwards of "
                      "{:.0f} tokens on average ({:.1f}% padding), {:.1f} bytes per token on disk",
                      state, all_tokens, out["tokens_per_second"].get<double>(), seconds, forward_seconds,
                      out["forward_tokens_per_second"].get<double>(), forwards, out["mean_tokens_per_forward"].get<double>(),
                      100 * out["padding_share"].get<double>(), out["disk_bytes_per_token"].get<double>());
    return out;
  }

  struct Batch {
    std::size_t start, end, width;  // windows [start, end), padded to width tokens
  };

  // Consecutive windows fill a token budget (rows x longest row <= batch_tokens), so short documents
  // share one forward.
  std::vector<Batch> plan_batches(const std::vector<Window>& windows) const {
    const std::size_t budget = settings_.batch_tokens;
    std::vector<Batch> batches;
    for (std::size_t i = 0; i < windows.size(); ++i) {
      const std::size_t n = windows[i].ids.size();
      if (!batches.empty()) {
        Batch& last = batches.back();
        const std::size_t wider = std::max(last.width, n);
        if (wider * (last.end - last.start + 1) <= budget) {
          last.end = i + 1;
          last.width = wider;
          continue;
        }
      }
      batches.push_back({i, i + 1, n});
    }
    return batches;
  }

  // One forward's inputs, built on the host: padded ids and mask [rows, width], the flat positions of
  // its real tokens with their token and set ids, and the last token of each window that ends a document.
  struct ForwardInput {
    Tensor ids, mask, real, token_ids, set_ids;
    std::vector<int64_t> ending_rows, ending_windows;
  };

  static ForwardInput forward_input(const std::vector<Window>& windows, const Batch& batch, long long pad_token_id, bool ending) {
    const std::size_t rows = batch.end - batch.start, width = batch.width;
    std::vector<int64_t> ids(rows * width, std::max<long long>(pad_token_id, 0)), mask(rows * width, 0), real;
    std::vector<int32_t> token_ids;
    std::vector<int16_t> set_ids;
    ForwardInput in;
    for (std::size_t r = 0; r < rows; ++r) {
      const Window& w = windows[batch.start + r];
      for (std::size_t j = 0; j < w.ids.size(); ++j) {
        ids[r * width + j] = w.ids[j];
        mask[r * width + j] = 1;
        real.push_back(static_cast<int64_t>(r * width + j));
        token_ids.push_back(static_cast<int32_t>(w.ids[j]));
        set_ids.push_back(static_cast<int16_t>(w.set));
      }
      if (ending && w.ends_document) {
        in.ending_rows.push_back(static_cast<int64_t>(real.size() - 1));
        in.ending_windows.push_back(static_cast<int64_t>(batch.start + r));
      }
    }
    auto shape = [](std::size_t a, std::size_t b) { return std::vector<int64_t>{static_cast<int64_t>(a), static_cast<int64_t>(b)}; };
    in.ids = torch::tensor(ids, torch::kInt64).view(shape(rows, width));
    in.mask = torch::tensor(mask, torch::kInt64).view(shape(rows, width));
    in.real = torch::tensor(real, torch::kInt64);
    const auto n = static_cast<int64_t>(real.size());
    in.token_ids = torch::from_blob(token_ids.data(), {n}, torch::kInt32).clone();
    in.set_ids = torch::from_blob(set_ids.data(), {n}, torch::kInt16).clone();
    return in;
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
