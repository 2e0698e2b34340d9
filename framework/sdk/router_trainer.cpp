#include "moelab/lib/router_trainer.h"

#include "moelab/lib/distributed.h"
#include "moelab/lib/finite.h"
#include "moelab/lib/interrupted.h"
#include "moelab/lib/log.h"
#include "moelab/lib/router_checkpoint.h"
#include "moelab/lib/safetensors.h"
#include "moelab/lib/schedule.h"
#include "moelab/lib/seeded.h"

#include <ATen/CPUGeneratorImpl.h>
#include <fcntl.h>
#include <fmt/format.h>
#include <fmt/ranges.h>
#include <torch/optim/adamw.h>
#include <torch/serialize.h>
#include <torch/torch.h>
#include <unistd.h>

#include <algorithm>
#include <atomic>
#include <chrono>
#include <cmath>
#include <csignal>
#include <limits>
#include <memory>
#include <mutex>
#include <numeric>
#include <random>
#include <sstream>
#include <stdexcept>
#include <utility>

namespace moelab {

namespace fs = std::filesystem;

// The one interrupt flag of the process: set by the signal handler or request_interrupt(), read by the
// trainer between steps. (Defined here, in the SDK library, so that plugins, host and tests share it.)
namespace {
std::atomic<bool> interrupt_flag{false};
static_assert(std::atomic<bool>::is_always_lock_free, "the interrupt flag is set from a signal handler");
}  // namespace

Interrupted::Interrupted(const std::string& message) : std::runtime_error(message) {}
Interrupted::~Interrupted() = default;
void request_interrupt() noexcept { interrupt_flag.store(true); }
bool interrupt_requested() noexcept { return interrupt_flag.load(); }

namespace {

// SIGINT/SIGTERM only raise the flag (the step in progress finishes and is saved); a second one while
// the flag is up takes the signal's default action at once.
void on_interrupt_signal(int signal) {
  if (interrupt_flag.exchange(true)) {
    struct sigaction fallback {};
    fallback.sa_handler = SIG_DFL;
    sigemptyset(&fallback.sa_mask);
    sigaction(signal, &fallback, nullptr);
    raise(signal);
    return;
  }
  static const char kNote[] = "\nmoelab: interrupt received: finishing the current training step and saving it (once more to stop at once)\n";
  [[maybe_unused]] ssize_t written = ::write(STDERR_FILENO, kNote, sizeof kNote - 1);
}

// The handlers live only while train() runs; the previous ones come back after.
class InterruptHandlers {
 public:
  InterruptHandlers() {
    struct sigaction handler {};
    handler.sa_handler = on_interrupt_signal;
    sigemptyset(&handler.sa_mask);
    handler.sa_flags = SA_RESTART;
    sigaction(SIGINT, &handler, &previous_int_);
    sigaction(SIGTERM, &handler, &previous_term_);
  }
  ~InterruptHandlers() {
    sigaction(SIGINT, &previous_int_, nullptr);
    sigaction(SIGTERM, &previous_term_, nullptr);
  }
  InterruptHandlers(const InterruptHandlers&) = delete;
  InterruptHandlers& operator=(const InterruptHandlers&) = delete;

 private:
  struct sigaction previous_int_ {}, previous_term_ {};
};

// Not fs::remove_all: pip's libtorch.so exports a broken copy of it (see tests/support/test_run.cpp).
void remove_tree(const fs::path& path) {
  std::error_code ec;
  if (fs::is_directory(fs::symlink_status(path, ec)))
    for (const auto& entry : fs::directory_iterator(path, ec)) remove_tree(entry.path());
  fs::remove(path, ec);
}

void fsync_file(const fs::path& file) {
  int fd = ::open(file.c_str(), O_RDONLY);
  if (fd < 0) throw std::runtime_error(fmt::format("cannot open {} to sync it", file.string()));
  const bool ok = ::fsync(fd) == 0;
  ::close(fd);
  if (!ok) throw std::runtime_error(fmt::format("writing {} failed (disk full?)", file.string()));
}

// Metrics fields that are not loss terms (not summed into the epoch means, not in the step's loss list).
bool is_bookkeeping(const std::string& name) {
  return name == "stage" || name == "epoch" || name == "step" || name == "attempt" || name == "skipped";
}

// "model.layers.12.mlp.gate.weight" -> 12; -1 when the name has no layer.
long long layer_of(const std::string& name) {
  const std::size_t at = name.find("layers.");
  if (at == std::string::npos) return -1;
  try {
    return std::stoll(name.substr(at + 7));
  } catch (const std::exception&) {
    return -1;
  }
}

// One rule for every stage: an explicit `layers` list wins, else the last `last_layers` MoE layers (0: all).
std::vector<int> select_layers(const RouterTraining& settings, const ModelInfo& info, const std::string& stage) {
  if (!settings.layers.empty()) return std::vector<int>(settings.layers.begin(), settings.layers.end());
  const auto& moe = info.moe_layers;
  const long long last = settings.last_layers == 0 ? static_cast<long long>(moe.size()) : settings.last_layers;
  if (last > static_cast<long long>(moe.size()))
    throw std::runtime_error(fmt::format("[{}] last_layers = {}, but the model has {} MoE layers", stage, last, moe.size()));
  return std::vector<int>(moe.end() - last, moe.end());
}

// The gradient norm that `term` alone puts on `params` (the graph is kept for the full backward).
double grad_norm(const torch::Tensor& term, const std::vector<torch::Tensor>& params) {
  if (!term.requires_grad()) return 0.0;
  auto grads = torch::autograd::grad({term}, params, {}, /*retain_graph=*/true, false, /*allow_unused=*/true);
  double sq = 0;
  for (const auto& g : grads)
    if (g.defined()) sq += g.pow(2).sum().item<double>();
  return std::sqrt(sq);
}

// One line per step: every loss term, lambda(t), lr and the routers' gradient norm from "reg" alone.
// A regularizer without gradient is exactly the public RoMA script's failure, so it is shouted.
void log_step(const std::string& stage, const nlohmann::json& row, long long total_steps) {
  std::string terms;
  for (const auto& [name, value] : row.items())
    if (!is_bookkeeping(name) && value.is_number()) terms += fmt::format(" {} {:.5g}", name, value.get<double>());
  log::info("[{}] step {}/{} epoch {}:{}", stage, row["step"].get<long long>() + 1, total_steps, row["epoch"].get<long long>(), terms);
  if (row.contains("reg_grad_norm") && row.contains("lambda") && row["lambda"].get<double>() > 0 && row["reg_grad_norm"].get<double>() == 0.0)
    log::warn("!!! step {}: the regularizer has no gradient on the routers (reg {:.5g} is a constant); it is not training anything",
              row["step"].get<long long>(), row["reg"].get<double>());
}

// What cannot change in router training: with every trained router in decoder layer L or later, layer
// L's input and the routing of the MoE layers before L depend on frozen weights only. Both are kept per
// example (its real tokens only) from the forward that first sees it, in epoch 1; a later batch whose
// examples are all kept starts at layer L (Model's layer input hooks) and gets that routing back.
class LayerInputCache {
 public:
  LayerInputCache(Model& model, int layer, bool keep_routing, double device_budget_gib, std::size_t examples, std::string stage)
      : model_(model), layer_(layer), keep_routing_(keep_routing), budget_(device_budget_gib * kGiB), entries_(examples),
        stage_(std::move(stage)) {
    LayerInputHooks hooks;
    hooks.layer = layer;
    hooks.capture = [this](const torch::Tensor& ids, const torch::Tensor& mask, const torch::Tensor& input) { capture(ids, mask, input); };
    hooks.start = [this](const torch::Tensor& ids, const torch::Tensor& mask) { return start(ids, mask); };
    active_ = model_.set_layer_input_hooks(std::move(hooks));
    if (!active_) log::info("[{}] cache_hidden: this model cannot start a forward at a layer; every step runs every layer", stage_);
  }
  ~LayerInputCache() {
    if (active_) model_.set_layer_input_hooks({});
  }
  LayerInputCache(const LayerInputCache&) = delete;
  LayerInputCache& operator=(const LayerInputCache&) = delete;

  // Arms the hooks for the one forward of data.batch(rows).
  void arm(const std::vector<std::size_t>& rows) {
    rows_ = rows;
    armed_ = active_;
    captured_ = started_ = false;
  }

  // After that forward: keeps the routing of a captured batch, or gives a started one its routing back.
  void complete(ObjectiveBatch& batch) {
    armed_ = false;
    if (captured_ && keep_routing_) {
      const torch::Tensor kept = kept_.reshape(-1);
      for (const RouterTrace& trace : batch.routers) {
        if (trace.layer >= layer_) break;
        const torch::Tensor logits = keep(trace.logits.detach().index({kept})), ids = keep(trace.topk_ids.index({kept})),
                            weights = keep(trace.topk_weights.detach().index({kept}));
        long long offset = 0;
        for (std::size_t b = 0; b < rows_.size(); ++b) {
          if (!fresh_[b]) continue;
          const long long n = kept_rows_[b];
          entries_[rows_[b]].routing.push_back({trace.layer, logits.narrow(0, offset, n), ids.narrow(0, offset, n), weights.narrow(0, offset, n)});
          offset += n;
        }
      }
    }
    if (captured_ && !estimated_) {
      estimated_ = true;
      const double estimate = static_cast<double>(device_bytes_ + host_bytes_) / static_cast<double>(rows_.size()) * static_cast<double>(entries_.size());
      const torch::Device device = model_.device();
      log::info("[{}] cache_hidden: layer {}'s input{} for {} examples: ~{:.1f} MiB (estimated from the first batch), {}", stage_, layer_,
                keep_routing_ && layer_ > model_.info().moe_layers.front() ? " and the routing of the MoE layers before it" : "",
                entries_.size(), estimate / kMiB,
                !device.is_cuda() ? fmt::format("in {} memory (the model's device)", device.str())
                : estimate <= budget_ ? fmt::format("kept on {} (cache_hidden_device_gib = {:g})", device.str(), budget_ / kGiB)
                                      : fmt::format("on {} up to cache_hidden_device_gib = {:g}, the rest in pinned host memory", device.str(), budget_ / kGiB));
    }
    if (captured_ && cached_ == entries_.size())
      log::info("[{}] cache_hidden: all {} examples kept ({:.1f} MiB on {}, {:.1f} MiB in pinned host memory); steps now start at layer {}",
                stage_, cached_, static_cast<double>(device_bytes_) / kMiB, model_.device().str(), static_cast<double>(host_bytes_) / kMiB, layer_);
    if (started_ && keep_routing_ && !entries_[rows_[0]].routing.empty()) {
      const torch::Tensor real = mask_.reshape(-1);
      std::vector<RouterTrace> before;
      for (std::size_t j = 0; j < entries_[rows_[0]].routing.size(); ++j) {
        auto rebuild = [&](torch::Tensor RouterTrace::*field) {
          std::vector<torch::Tensor> parts;
          for (std::size_t r : rows_) parts.push_back((entries_[r].routing.at(j).*field).to(model_.device(), /*non_blocking=*/true));
          const torch::Tensor& first = entries_[rows_[0]].routing[j].*field;
          torch::Tensor full = torch::zeros({real.size(0), first.size(1)}, first.options().device(model_.device()));
          return full.index_put_({real}, torch::cat(parts));
        };
        before.push_back({entries_[rows_[0]].routing[j].layer, rebuild(&RouterTrace::logits), rebuild(&RouterTrace::topk_ids),
                          rebuild(&RouterTrace::topk_weights)});
      }
      batch.routers.insert(batch.routers.begin(), before.begin(), before.end());
    }
    if (started_) ++started_steps_;
  }

  nlohmann::json summary() const {
    return {{"layer", layer_}, {"examples", cached_}, {"device_mib", static_cast<double>(device_bytes_) / kMiB},
            {"pinned_host_mib", static_cast<double>(host_bytes_) / kMiB}, {"steps_started_at_layer", started_steps_}};
  }

 private:
  static constexpr double kMiB = 1024.0 * 1024.0, kGiB = kMiB * 1024.0;

  // An example's real tokens (to check the key), its layer L input and its routing before L, on the
  // model's device or in pinned host memory.
  struct Entry {
    torch::Tensor tokens;  // [n] int64, CPU
    torch::Tensor input;   // [n, hidden]
    std::vector<RouterTrace> routing;
  };

  // `t` on the model's device while the cache fits the budget, else in pinned host memory.
  torch::Tensor keep(const torch::Tensor& t) {
    const auto bytes = static_cast<long long>(t.numel() * t.element_size());
    if (!t.is_cuda() || static_cast<double>(device_bytes_ + bytes) <= budget_) {
      device_bytes_ += bytes;
      return t;
    }
    host_bytes_ += bytes;
    return torch::empty(t.sizes(), t.options().device(torch::kCPU).pinned_memory(true)).copy_(t);
  }

  // Real tokens of each row of a [B, T] batch, and their total per row.
  std::vector<long long> row_counts(const torch::Tensor& mask) const {
    const torch::Tensor counts = mask.sum(1).to(torch::kCPU, torch::kInt64).contiguous();
    return std::vector<long long>(counts.data_ptr<int64_t>(), counts.data_ptr<int64_t>() + counts.numel());
  }

  void require_rows(const torch::Tensor& ids) const {
    if (ids.size(0) != static_cast<long long>(rows_.size()))
      throw std::logic_error(fmt::format("[{}] cache_hidden: the stage's batch of {} examples ran a forward of {} rows; set cache_hidden = false",
                                         stage_, rows_.size(), ids.size(0)));
  }

  void capture(const torch::Tensor& ids, const torch::Tensor& mask, const torch::Tensor& input) {
    if (!armed_) return;
    armed_ = false;
    require_rows(ids);
    fresh_.assign(rows_.size(), false);
    for (std::size_t b = 0; b < rows_.size(); ++b) fresh_[b] = !entries_[rows_[b]].input.defined();
    std::vector<uint8_t> flags(fresh_.begin(), fresh_.end());
    const torch::Tensor fresh = torch::tensor(flags, torch::kUInt8).to(mask.device(), torch::kBool);
    kept_ = mask & fresh.unsqueeze(1);
    kept_rows_ = row_counts(kept_);
    const torch::Tensor tokens = ids.masked_select(kept_).to(torch::kCPU);
    const torch::Tensor kept_input = keep(input.detach().index({kept_}));
    long long offset = 0;
    for (std::size_t b = 0; b < rows_.size(); ++b) {
      if (!fresh_[b]) continue;
      Entry& entry = entries_[rows_[b]];
      entry.tokens = tokens.narrow(0, offset, kept_rows_[b]);
      entry.input = kept_input.narrow(0, offset, kept_rows_[b]);
      offset += kept_rows_[b];
      ++cached_;
    }
    captured_ = true;
  }

  torch::Tensor start(const torch::Tensor& ids, const torch::Tensor& mask) {
    if (!armed_) return {};
    for (std::size_t r : rows_)
      if (!entries_[r].input.defined()) return {};  // runs every layer; capture() keeps what is missing
    armed_ = false;
    require_rows(ids);
    const std::vector<long long> counts = row_counts(mask);
    const torch::Tensor tokens = ids.masked_select(mask).to(torch::kCPU);
    std::vector<torch::Tensor> parts;
    long long offset = 0;
    for (std::size_t b = 0; b < rows_.size(); ++b) {
      const Entry& entry = entries_[rows_[b]];
      if (counts[b] != entry.tokens.size(0) || !torch::equal(tokens.narrow(0, offset, counts[b]), entry.tokens))
        throw std::runtime_error(fmt::format("[{}] cache_hidden: example {} has other tokens than when its layer {} input was kept ({} real "
                                             "tokens then, {} now); the stage's batches must give an example the same tokens every time, "
                                             "or set cache_hidden = false",
                                             stage_, rows_[b], layer_, entry.tokens.size(0), counts[b]));
      parts.push_back(entry.input.to(mask.device(), /*non_blocking=*/true));
      offset += counts[b];
    }
    torch::Tensor input = torch::zeros({ids.size(0), ids.size(1), parts[0].size(1)}, parts[0].options());
    input.index_put_({mask}, torch::cat(parts));
    mask_ = mask;
    started_ = true;
    return input;
  }

  Model& model_;
  const int layer_;
  const bool keep_routing_;
  const double budget_;
  std::vector<Entry> entries_;  // by example index
  const std::string stage_;
  bool active_ = false;
  std::size_t cached_ = 0;
  long long device_bytes_ = 0, host_bytes_ = 0, started_steps_ = 0;
  bool estimated_ = false;
  // The batch in progress.
  std::vector<std::size_t> rows_;
  bool armed_ = false, captured_ = false, started_ = false;
  std::vector<bool> fresh_;           // captured: rows kept by this batch
  std::vector<long long> kept_rows_;  // captured: real tokens kept per row
  torch::Tensor kept_, mask_;         // captured: [B, T] positions kept; started: [B, T] real tokens
};

// Safetensors metadata holds strings: text as is, everything else as JSON.
std::map<std::string, std::string> as_metadata(const nlohmann::json& hyper) {
  std::map<std::string, std::string> meta;
  for (const auto& [key, value] : hyper.items()) meta[key] = value.is_string() ? value.get<std::string>() : value.dump();
  return meta;
}

}  // namespace

Options<RouterTraining> router_training_options(const RouterTrainingDefaults& d) {
  return Options<RouterTraining>()
      .component("objective", &RouterTraining::objective, Kind::objective, "the loss (an objective plugin)")
      .integers("layers", &RouterTraining::layers, {}, "decoder layers whose routers train (overrides last_layers)")
      .integer("last_layers", &RouterTraining::last_layers, d.last_layers, "train the routers of the last N MoE layers (0: every MoE layer)")
      .at_least(0)
      .integer("epochs", &RouterTraining::epochs, d.epochs, "passes over the data").at_least(1)
      .integer("batch_size", &RouterTraining::batch_size, d.batch_size, "examples per step").at_least(1)
      .real("lr", &RouterTraining::lr, d.lr, "AdamW learning rate after warmup").positive()
      .real("weight_decay", &RouterTraining::weight_decay, d.weight_decay, "AdamW weight decay").at_least(0)
      .integer("warmup_steps", &RouterTraining::warmup_steps, d.warmup_steps, "linear lr warmup steps (0 or 1: none)").at_least(0)
      .real("grad_clip", &RouterTraining::grad_clip, 0.0, "clip the routers' gradient norm to this (0: off)").at_least(0)
      .integer("reg_grad_norm_every", &RouterTraining::reg_grad_norm_every, 50,
               "log the routers' gradient norm from the objective's reg term alone (reg_grad_norm) on step 0 and every N steps "
               "(it costs a second backward)")
      .at_least(1)
      .flag("cache_hidden", &RouterTraining::cache_hidden, true,
            "keep the input of the first trained layer per example from epoch 1 (the layers before it are frozen) and run only the "
            "layers from there in later epochs")
      .real("cache_hidden_device_gib", &RouterTraining::cache_hidden_device_gib, 16.0,
            "cache_hidden: keep it on the model's device up to this many GiB, the rest in pinned host memory")
      .at_least(0)
      .choice("on_nonfinite", &RouterTraining::on_nonfinite, OnNonfinite::stop,
              {{"stop", OnNonfinite::stop}, {"skip_step", OnNonfinite::skip_step}},
              "a NaN/Inf loss or router gradient: stop with an error naming the step and tensor, or skip that step's update")
      .integer("max_skipped_steps", &RouterTraining::max_skipped_steps, 10, "skip_step: stop with an error after more skipped steps than this")
      .at_least(0)
      .integer("checkpoint_every", &RouterTraining::checkpoint_every, 200,
               "save a resumable checkpoint (<stage>/resume/) every N steps (0: only when interrupted)")
      .at_least(0)
      .integer("histogram_every", &RouterTraining::histogram_every, 50,
               "TensorBoard (<run>/tb/): histograms of every MoE layer's router probabilities and expert load (share of routed "
               "token slots per expert) on step 0 and every N steps (0: never)")
      .at_least(0);
}


// Where training stands between two steps: everything resume/ holds besides routers and AdamW state.
struct RouterTrainer::State {
  long long step = 0, total_steps = 0, epoch = 0;
  std::size_t start = 0;             // the next batch's first position in `order`; 0: the epoch's shuffle is still to come
  std::vector<std::size_t> order;    // this epoch's shuffled rows
  SeededRng rng;                     // the shuffles' generator, as it stands after this epoch's shuffle
  std::map<std::string, double> sums;  // this epoch's loss terms over its applied steps
  long long counted = 0;             // this epoch's applied (not skipped) steps
  nlohmann::json epoch_means = nlohmann::json::array();
  nlohmann::json skipped_steps = nlohmann::json::array();
  long long tokens = 0;
  long long attempt = 1;
};

RouterTrainer::RouterTrainer(const RouterTraining& settings, RunContext& context, std::string stage, const ObjectiveNeeds& stage_gives,
                             const std::string& order_stream)
    : settings_(settings), context_(context), stage_(std::move(stage)), order_stream_(order_stream),
      objective_(context.make<Objective>(settings.objective)) {
  require_needs(objective_->needs(), stage_gives, "[" + settings_.objective + "]", "[" + stage_ + "]");
  Model& model = context_.model();
  layers_ = select_layers(settings_, model.info(), stage_);
  for (auto& [name, w] : model.named_weights()) w.requires_grad_(false);
  for (int l : layers_) {
    torch::Tensor gate = model.router_weight(l);
    base_[l] = gate.detach().clone();
    params_.push_back(gate.requires_grad_(true));
    param_names_.push_back(router_tensor_name(model, l));
  }
  log::info("[{}] training the routers of layers {} only ({} parameters) with objective [{}]", stage_, fmt::join(layers_, ", "),
            std::accumulate(params_.begin(), params_.end(), 0LL, [](long long a, const torch::Tensor& t) { return a + t.numel(); }),
            settings_.objective);
}

RouterTrainer::~RouterTrainer() {
  torch::NoGradGuard no_grad;
  for (auto& p : params_) p.requires_grad_(false);
  for (const auto& [layer, base] : base_) context_.model().router_weight(layer).copy_(base);
}

nlohmann::json RouterTrainer::train(const TrainingData& data, const fs::path& out_dir, const nlohmann::json& stage_settings) {
  Model& model = context_.model();
  const auto batch_size = static_cast<std::size_t>(settings_.batch_size);
  const long long steps_per_epoch = static_cast<long long>((data.size + batch_size - 1) / batch_size);
  const LinearWarmup lr_schedule(settings_.lr, settings_.warmup_steps);
  torch::optim::AdamW optimizer(params_, torch::optim::AdamWOptions(settings_.lr).weight_decay(settings_.weight_decay));
  const fs::path checkpoint = out_dir / "routers.safetensors";
  // This stage is not done, so a checkpoint here is an unfinished attempt's: no later stage may apply it.
  if (distributed::is_main() && fs::exists(checkpoint)) {
    log::warn("[{}] removing {}, left by an unfinished earlier attempt of this stage", stage_, checkpoint.string());
    fs::remove(checkpoint);
  }
  State at;
  at.total_steps = steps_per_epoch * settings_.epochs;
  at.order.resize(data.size);
  std::iota(at.order.begin(), at.order.end(), 0);
  at.rng = SeededRng(context_.seed_for(order_stream_));
  const nlohmann::json id = identity(data);
  load_resume(out_dir, at, id, optimizer);
  const long long first_step = at.step, tokens_before = at.tokens;

  std::unique_ptr<LayerInputCache> cache;
  const int first_layer = *std::min_element(layers_.begin(), layers_.end());
  if (settings_.cache_hidden && first_layer > 0 && settings_.epochs > 1)
    cache = std::make_unique<LayerInputCache>(model, first_layer, objective_->needs().router_logits, settings_.cache_hidden_device_gib,
                                              data.size, stage_);

  InterruptHandlers handlers;
  Progress progress(stage_, at.total_steps - at.step, "tokens");
  const auto started = std::chrono::steady_clock::now();
  auto epoch_started = started;
  long long epoch_tokens = at.start == 0 ? 0 : -1;  // -1: this epoch began in an earlier attempt
  nlohmann::json epoch_speed = nlohmann::json::array();
  while (at.step < at.total_steps) {
    if (at.start == 0) at.rng.shuffle(at.order);
    std::vector<std::size_t> rows(at.order.begin() + static_cast<std::ptrdiff_t>(at.start),
                                  at.order.begin() + static_cast<std::ptrdiff_t>(std::min(at.order.size(), at.start + batch_size)));
    // torchrun: this rank's contiguous part of the global batch (all of it in one process).
    const auto [first_row, end_row] = distributed::shard_range(rows.size());
    rows = std::vector<std::size_t>(rows.begin() + static_cast<std::ptrdiff_t>(first_row), rows.begin() + static_cast<std::ptrdiff_t>(end_row));
    ObjectiveBatch batch;  // no rows on this rank (a last batch smaller than the world): attention_mask undefined
    if (!rows.empty()) {
      if (cache) cache->arm(rows);
      batch = data.batch(rows, objective_->needs());
      if (cache) cache->complete(batch);
    }
    long long batch_tokens = batch.attention_mask.defined() ? batch.attention_mask.sum().item<int64_t>() : 0;
    nlohmann::json row;
    const bool applied = step(std::move(batch), optimizer, lr_schedule.at(at.step), at, row);
    if (distributed::active()) batch_tokens = global_tokens_;  // every rank's
    if (applied) {
      for (const auto& [name, value] : row.items())
        if (!is_bookkeeping(name) && name != "lr" && name != "reg_grad_norm") at.sums[name] += value.get<double>();
      ++at.counted;
    }
    at.tokens += batch_tokens;
    if (epoch_tokens >= 0) epoch_tokens += batch_tokens;
    progress.advance(batch_tokens, fmt::format("epoch {} loss {:.4f}{}", at.epoch, row["loss"].get<double>(),
                                               row.contains("reg") ? fmt::format(" reg {:.5f}", row["reg"].get<double>()) : ""));
    ++at.step;
    at.start += batch_size;
    if (at.start >= at.order.size()) {
      nlohmann::json means = {{"epoch", at.epoch}};
      for (const auto& [name, total] : at.sums) means[name] = total / static_cast<double>(std::max<long long>(at.counted, 1));
      log::info("[{}] epoch {}: {}", stage_, at.epoch, means.dump());
      at.epoch_means.push_back(means);
      const auto now = std::chrono::steady_clock::now();
      if (epoch_tokens >= 0)
        epoch_speed.push_back({{"epoch", at.epoch},
                               {"tokens_per_second", static_cast<double>(epoch_tokens) / std::chrono::duration<double>(now - epoch_started).count()}});
      epoch_started = now;
      epoch_tokens = 0;
      ++at.epoch;
      at.start = 0;
      at.sums.clear();
      at.counted = 0;
    }
    if (at.step == at.total_steps) break;  // a request now is left for whoever runs next: this training is complete
    // Under torchrun every rank stops at the same step: step() shares the ranks' requests.
    if (distributed::active() ? std::exchange(stop_requested_, false) : interrupt_flag.load()) {
      interrupt_flag.store(false);
      save_resume(out_dir, at, id, optimizer);
      distributed::barrier("after saving " + (out_dir / "resume").string());
      throw Interrupted(fmt::format("[{}] interrupted after step {}/{}; {} holds the routers, AdamW state and data position: "
                                    "run the same command with --resume to continue from step {}",
                                    stage_, at.step, at.total_steps, (out_dir / "resume").string(), at.step + 1));
    }
    if (settings_.checkpoint_every > 0 && at.step % settings_.checkpoint_every == 0) save_resume(out_dir, at, id, optimizer);
  }
  progress.finish();
  if (static_cast<long long>(at.skipped_steps.size()) == at.total_steps)
    throw std::runtime_error(fmt::format("[{}] every one of the {} steps was skipped (NaN/Inf loss or gradient), nothing trained; "
                                         "no routers.safetensors written", stage_, at.total_steps));
  const double seconds = std::chrono::duration<double>(std::chrono::steady_clock::now() - started).count();
  require_finite_routers(fmt::format("after step {}/{}", at.step, at.total_steps));

  nlohmann::json hyper = {{"objective", settings_.objective}, {"layers", layers_},          {"epochs", settings_.epochs},
                          {"batch_size", settings_.batch_size}, {"lr", settings_.lr},       {"weight_decay", settings_.weight_decay},
                          {"warmup_steps", settings_.warmup_steps}, {"grad_clip", settings_.grad_clip}, {"steps", at.step},
                          {"seed", context_.seed()}};
  hyper.update(stage_settings);
  if (distributed::world_size() > 1) hyper["world_size"] = distributed::world_size();
  if (distributed::is_main()) {
    save_router_checkpoint(checkpoint, model, layers_, base_, as_metadata(hyper));
    remove_tree(out_dir / "resume");
  }
  distributed::barrier("after writing " + checkpoint.string());
  nlohmann::json moved = nlohmann::json::object();
  torch::NoGradGuard no_grad;
  for (int l : layers_) moved[std::to_string(l)] = ((model.router_weight(l) - base_[l]).norm() / base_[l].norm()).item<double>();
  const double steps_run = static_cast<double>(at.step - first_step);
  nlohmann::json summary = {{"steps", at.step},
                            {"seconds", seconds},
                            {"steps_per_second", steps_run / seconds},
                            {"tokens_per_second", static_cast<double>(at.tokens - tokens_before) / seconds},
                            {"epochs", at.epoch_means},
                            {"target_layers", layers_},
                            {"relative_router_change", moved},
                            {"checkpoint", checkpoint.string()},
                            {"router_finetuning", hyper},
                            {"skipped_steps", at.skipped_steps},
                            {"attempts", at.attempt},
                            {"epoch_tokens_per_second", epoch_speed}};
  if (cache) summary["cache_hidden"] = cache->summary();
  if (first_step > 0) summary["resumed_from_step"] = first_step;
  return summary;
}

bool RouterTrainer::step(ObjectiveBatch batch, torch::optim::Optimizer& optimizer, double lr, State& at, nlohmann::json& row) {
  for (auto& group : optimizer.param_groups()) static_cast<torch::optim::AdamWOptions&>(group.options()).lr(lr);
  const bool has_rows = batch.attention_mask.defined();
  batch.trained_layers = layers_;
  batch.top_k = context_.model().info().top_k;
  batch.step = at.step;
  row = {{"stage", stage_}, {"epoch", at.epoch}, {"step", at.step}, {"attempt", at.attempt}, {"lr", lr}};
  LossTerms loss;
  optimizer.zero_grad();
  if (has_rows) {
    loss = objective_->compute(batch);
    row["loss"] = loss.total.item<double>();
    for (const auto& [name, value] : loss.parts) {
      row[name] = value.item<double>();
      if (name == "reg" && at.step % settings_.reg_grad_norm_every == 0) row["reg_grad_norm"] = grad_norm(value, params_);
    }
    loss.total.backward();
  }
  if (distributed::active()) {
    reduce_step(batch, row);
    // The ranks' weighted mean, on the loss's device (NCCL: the GPU), where the finiteness check below reads it.
    loss.total = torch::full({}, row["loss"].get<double>(), torch::dtype(torch::kFloat64).device(loss.total.device()));
  }
  if (settings_.grad_clip > 0) torch::nn::utils::clip_grad_norm_(params_, settings_.grad_clip);
  // One read per step: the loss, each router's gradient, and each router as the last step left it, all finite.
  std::vector<torch::Tensor> finite{torch::isfinite(loss.total.detach()).reshape({1})};
  for (const auto& p : params_) {
    finite.push_back(torch::isfinite(p.detach()).all().reshape({1}));
    if (p.grad().defined()) finite.push_back(torch::isfinite(p.grad()).all().reshape({1}));
  }
  if (!torch::cat(finite).all().item<bool>()) {
    require_finite_routers(at.step == 0 ? std::string("before the first step") : fmt::format("after step {}/{}", at.step, at.total_steps));
    const std::string report = nonfinite_report(at, row);
    if (settings_.on_nonfinite == OnNonfinite::stop)
      throw std::runtime_error(report + "; training stopped (on_nonfinite = \"stop\"), no routers.safetensors written");
    at.skipped_steps.push_back(at.step);
    const auto skipped = static_cast<long long>(at.skipped_steps.size());
    if (skipped > settings_.max_skipped_steps)
      throw std::runtime_error(fmt::format("{}; training stopped: {} steps skipped, more than max_skipped_steps = {} (steps {}), "
                                           "no routers.safetensors written",
                                           report, skipped, settings_.max_skipped_steps, at.skipped_steps.dump()));
    optimizer.zero_grad();  // the update is not applied and AdamW's moments and step count stay as they were
    log::warn("!!! {}; step skipped, its update not applied ({} of at most {} skipped steps)", report, skipped, settings_.max_skipped_steps);
    row["skipped"] = true;
    context_.record_metrics(row);
    return false;
  }
  optimizer.step();
  context_.record_metrics(row);
  if (settings_.histogram_every > 0 && at.step % settings_.histogram_every == 0 && batch.attention_mask.defined())
    record_routing_histograms(batch.attention_mask, at.step);
  log_step(stage_, row, at.total_steps);
  return true;
}

void RouterTrainer::record_routing_histograms(const torch::Tensor& attention_mask, long long step) const {
  torch::NoGradGuard no_grad;
  const Model& model = context_.model();
  const torch::Tensor real = attention_mask.reshape({-1}).to(torch::kBool);
  auto as_vector = [](const torch::Tensor& t) {
    torch::Tensor c = t.to(torch::kCPU, torch::kFloat64).contiguous();
    return std::vector<double>(c.data_ptr<double>(), c.data_ptr<double>() + c.numel());
  };
  for (const RouterTrace& trace : model.routing()) {
    torch::Tensor logits = trace.logits.detach(), ids = trace.topk_ids;
    if (real.numel() == logits.size(0)) {  // padding rows route too, but are not data
      const torch::Tensor rows = real.to(logits.device());
      logits = logits.index({rows});
      ids = ids.index({rows});
    }
    if (ids.numel() == 0) continue;
    const long long experts = logits.size(1);
    const torch::Tensor load = torch::bincount(ids.reshape({-1}), {}, experts).to(torch::kFloat64) / static_cast<double>(ids.numel());
    const std::string layer = "layer" + std::to_string(trace.layer);
    context_.record_histogram(stage_ + "/router_probs/" + layer, as_vector(torch::softmax(logits.to(torch::kFloat32), -1)), step);
    context_.record_histogram(stage_ + "/expert_load/" + layer, as_vector(load), step);
  }
}

// The step's share of the global batch that this rank's loss averages over: its examples for
// multiple-choice objectives, else its scored tokens (targets other than -100), else its real tokens.
double RouterTrainer::share_of(const ObjectiveBatch& batch) const {
  if (!batch.attention_mask.defined()) return 0;
  if (objective_->needs().choices) return static_cast<double>(batch.attention_mask.size(0));
  if (batch.target_ids.defined()) return static_cast<double>(batch.target_ids.ne(-100).sum().item<int64_t>());
  return static_cast<double>(batch.attention_mask.sum().item<int64_t>());
}

// Data parallel (#17): each rank's router gradients, weighted by its share of the global batch, summed
// over ranks (bucketed all-reduce), so that every rank holds the gradient one process gets from the whole
// batch; the row's loss terms become the same weighted means, global_tokens_ the batch's real tokens, and
// a stop request of any rank a stop of all.
void RouterTrainer::reduce_step(const ObjectiveBatch& batch, nlohmann::json& row) {
  nlohmann::json mine = nlohmann::json::object();
  for (const auto& [name, value] : row.items())
    if (!is_bookkeeping(name) && value.is_number()) mine[name] = value;
  const double share = share_of(batch);
  const long long tokens = batch.attention_mask.defined() ? batch.attention_mask.sum().item<int64_t>() : 0;
  const std::string step = fmt::format("[{}] step {}", stage_, row["step"].get<long long>() + 1);
  const std::vector<nlohmann::json> all = distributed::all_gather_json(
      {{"share", share}, {"tokens", tokens}, {"stop", interrupt_requested()}, {"values", mine}}, step + ": sharing the ranks' losses");
  double total_share = 0;
  global_tokens_ = 0;
  std::map<std::string, std::pair<double, double>> sums;  // name -> (sum of share * value, sum of shares)
  for (const auto& r : all) {
    const double s = r["share"].get<double>();
    total_share += s;
    global_tokens_ += r["tokens"].get<long long>();
    stop_requested_ = stop_requested_ || r["stop"].get<bool>();
    for (const auto& [name, value] : r["values"].items()) {
      sums[name].first += s * (value.is_number() ? value.get<double>() : std::numeric_limits<double>::quiet_NaN());  // JSON has no NaN
      sums[name].second += s;
    }
  }
  for (const auto& [name, sum] : sums) {
    // A value every rank has alike (lr, lambda) stays as it is; a loss term becomes the weighted mean.
    bool alike = true;
    for (const auto& r : all) alike = alike && r["values"].contains(name) && r["values"][name] == all[0]["values"][name];
    row[name] = alike ? all[0]["values"][name].get<double>() : sum.first / sum.second;
  }
  std::vector<torch::Tensor> grads;
  for (auto& p : params_) {
    if (!p.grad().defined()) p.mutable_grad() = torch::zeros_like(p);
    p.mutable_grad().mul_(total_share > 0 ? share / total_share : 0.0);
    grads.push_back(p.grad());
  }
  distributed::all_reduce_sum(grads, step + ": all-reduce of the router gradients");
}

void RouterTrainer::require_finite_routers(const std::string& when) const {
  std::vector<torch::Tensor> finite;
  for (const auto& p : params_) finite.push_back(torch::isfinite(p.detach()).all().reshape({1}));
  torch::Tensor flags = torch::cat(finite).cpu();
  if (flags.all().item<bool>()) return;
  std::vector<std::string> bad;
  for (std::size_t i = 0; i < params_.size(); ++i)
    if (!flags[static_cast<long long>(i)].item<bool>()) bad.push_back(fmt::format("{} (layer {})", param_names_[i], layers_[i]));
  throw std::runtime_error(fmt::format("[{}] {}: the trained router weight{} {} hold{} NaN/Inf; training stopped, no routers.safetensors "
                                       "written (lr = {:g}: is the learning rate too high?)",
                                       stage_, when, bad.size() > 1 ? "s" : "", fmt::join(bad, ", "), bad.size() > 1 ? "" : "s", settings_.lr));
}

// Names what is not finite in this step: the loss and its parts, the routers' gradients, the first MoE
// layer whose routing is not finite in the last forward, and the model weights that hold NaN/Inf.
std::string RouterTrainer::nonfinite_report(const State& at, const nlohmann::json& row) const {
  std::vector<std::string> found;
  const double total = row["loss"].get<double>();
  if (!std::isfinite(total)) {
    std::vector<std::string> parts;
    for (const auto& [name, value] : row.items())
      if (!is_bookkeeping(name) && name != "loss" && name != "lr" && value.is_number() && !std::isfinite(value.get<double>()))
        parts.push_back(fmt::format("{} = {}", name, value.get<double>()));
    found.push_back(fmt::format("the loss is {}{}", total, parts.empty() ? "" : fmt::format(" ({})", fmt::join(parts, ", "))));
  }
  for (std::size_t i = 0; i < params_.size(); ++i) {
    const torch::Tensor& grad = params_[i].grad();
    if (grad.defined() && !torch::isfinite(grad).all().item<bool>())
      found.push_back(fmt::format("the gradient of {} (layer {}) holds NaN/Inf", param_names_[i], layers_[i]));
  }
  Model& model = context_.model();
  std::string routing = "every MoE layer routed finitely in the last forward";
  for (const RouterTrace& trace : model.routing())
    if (!torch::isfinite(trace.logits.detach()).all().item<bool>()) {
      routing = fmt::format("the first MoE layer whose router logits hold NaN/Inf in the last forward is layer {} ({})", trace.layer,
                            router_tensor_name(model, trace.layer));
      break;
    }
  return fmt::format("[{}] step {}/{} (epoch {}): {}; {}; {}", stage_, at.step + 1, at.total_steps, at.epoch, fmt::join(found, ", "), routing,
                     describe_nonfinite_weights(model));
}

nlohmann::json RouterTrainer::identity(const TrainingData& data) const {
  return {{"objective", settings_.objective}, {"layers", layers_},          {"epochs", settings_.epochs},
          {"batch_size", settings_.batch_size}, {"lr", settings_.lr},       {"weight_decay", settings_.weight_decay},
          {"warmup_steps", settings_.warmup_steps}, {"grad_clip", settings_.grad_clip}, {"examples", data.size},
          {"seed", context_.seed_for(order_stream_)}, {"model", model_fingerprint(context_.model())}};
}

// resume/: state.safetensors (the routers, the base routers they started from, this epoch's order, the
// CPU generator's state; metadata: the State and the identity) and optimizer.pt (AdamW). Written
// into resume.tmp/, then renamed over resume/ (the previous one is resume.old/ in between).
void RouterTrainer::save_resume(const fs::path& out_dir, const State& at, const nlohmann::json& identity,
                                torch::optim::Optimizer& optimizer) const {
  require_finite_routers(fmt::format("after step {}/{}", at.step, at.total_steps));
  if (!distributed::is_main()) return;  // torchrun: every rank holds the same state; rank 0 writes it
  const fs::path dir = out_dir / "resume", tmp = out_dir / "resume.tmp", old = out_dir / "resume.old";
  remove_tree(tmp);
  fs::create_directories(tmp);
  std::vector<std::pair<std::string, torch::Tensor>> tensors;
  for (std::size_t i = 0; i < layers_.size(); ++i) {
    tensors.emplace_back(fmt::format("router.{}", layers_[i]), params_[i].detach());
    tensors.emplace_back(fmt::format("base.{}", layers_[i]), base_.at(layers_[i]));
  }
  tensors.emplace_back("order", torch::tensor(std::vector<int64_t>(at.order.begin(), at.order.end()), torch::kInt64));
  {
    at::Generator generator = at::detail::getDefaultCPUGenerator();
    std::lock_guard<std::mutex> lock(generator.mutex());
    tensors.emplace_back("cpu_rng_state", generator.get_state());
  }
  std::ostringstream rng;
  rng << at.rng.engine();
  const nlohmann::json state = {{"step", at.step},   {"epoch", at.epoch},     {"start", at.start},   {"rng", rng.str()},
                                {"sums", at.sums},   {"counted", at.counted}, {"epoch_means", at.epoch_means},
                                {"skipped_steps", at.skipped_steps}, {"tokens", at.tokens}, {"attempt", at.attempt}};
  write_safetensors(tmp / "state.safetensors", tensors,
                    {{"moelab.kind", "router_training_resume"}, {"state", state.dump()}, {"identity", identity.dump()}});
  torch::save(optimizer, (tmp / "optimizer.pt").string());
  fsync_file(tmp / "optimizer.pt");
  remove_tree(old);
  if (fs::exists(dir)) fs::rename(dir, old);
  fs::rename(tmp, dir);
  remove_tree(old);
  log::info("[{}] saved a resumable checkpoint after step {}/{} in {}", stage_, at.step, at.total_steps, dir.string());
}

bool RouterTrainer::load_resume(const fs::path& out_dir, State& at, const nlohmann::json& identity, torch::optim::Optimizer& optimizer) {
  if (distributed::is_main()) remove_tree(out_dir / "resume.tmp");  // an unfinished save
  fs::path dir = out_dir / "resume";
  if (!fs::exists(dir / "state.safetensors")) dir = out_dir / "resume.old";  // stopped between the two renames of a save
  if (!fs::exists(dir / "state.safetensors")) return false;
  SafetensorsFile file(dir / "state.safetensors");
  auto refuse = [&](const std::string& why) {
    return std::runtime_error(fmt::format("[{}] {} was saved by another training: {}; remove that folder to train this stage from step 1",
                                          stage_, dir.string(), why));
  };
  const auto meta = file.metadata();
  if (!meta.count("state") || !meta.count("identity")) throw refuse("it has no state/identity metadata");
  const nlohmann::json saved = nlohmann::json::parse(meta.at("identity"));
  for (const auto& [key, value] : identity.items())
    if (saved.value(key, nlohmann::json()) != value) throw refuse(fmt::format("{} was {}, now {}", key, saved.value(key, nlohmann::json()).dump(), value.dump()));
  torch::NoGradGuard no_grad;
  for (std::size_t i = 0; i < layers_.size(); ++i) {
    const int l = layers_[i];
    if (!torch::equal(file.get(fmt::format("base.{}", l)).to(base_.at(l).device(), base_.at(l).scalar_type()), base_.at(l)))
      throw refuse(fmt::format("it started from other base routers of layer {} than this model's", l));
    params_[i].copy_(file.get(fmt::format("router.{}", l)));
  }
  torch::load(optimizer, (dir / "optimizer.pt").string(), context_.model().device());
  const nlohmann::json state = nlohmann::json::parse(meta.at("state"));
  at.step = state.at("step");
  at.epoch = state.at("epoch");
  at.start = state.at("start");
  std::istringstream rng(state.at("rng").get<std::string>());
  rng >> at.rng.engine();
  at.sums = state.at("sums").get<std::map<std::string, double>>();
  at.counted = state.at("counted");
  at.epoch_means = state.at("epoch_means");
  at.skipped_steps = state.at("skipped_steps");
  at.tokens = state.at("tokens");
  at.attempt = state.at("attempt").get<long long>() + 1;
  torch::Tensor order = file.get("order").to(torch::kCPU, torch::kInt64).contiguous();
  if (order.numel() != static_cast<long long>(at.order.size())) throw refuse(fmt::format("its data order has {} rows", order.numel()));
  for (std::size_t i = 0; i < at.order.size(); ++i) at.order[i] = static_cast<std::size_t>(order.data_ptr<int64_t>()[i]);
  {
    at::Generator generator = at::detail::getDefaultCPUGenerator();
    std::lock_guard<std::mutex> lock(generator.mutex());
    generator.set_state(file.get("cpu_rng_state").clone());
  }
  log::info("[{}] resuming from {}: step {}/{} (epoch {}), attempt {}", stage_, dir.string(), at.step + 1, at.total_steps, at.epoch, at.attempt);
  return true;
}

}  // namespace moelab
