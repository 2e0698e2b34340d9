// Generation over JSONL prompts with a baseline sampler (plain, greedy) and a second sampler (RoE, a
// sampling chain) in the same run: prompts encoded as HF's tokenizer(text) does, the checkpoint's stop ids
// and stop strings, max new tokens, then SQuAD exact match / F1 for QA records ({"question", "answers":
// [...]}), accuracy when the answer is a letter, and the paired comparison. For a sampler that decodes
// replicas of each row (RoE: KVCache::replicas, row 0 clean), the top-k change rate per MoE layer.
#include "moelab/moelab.h"
#include "moelab/lib/distributed.h"
#include "moelab/lib/files.h"
#include "moelab/lib/generation_config.h"
#include "moelab/lib/kv_cache_memory.h"
#include "moelab/lib/log.h"
#include "moelab/lib/multiple_choice.h"
#include "moelab/lib/paired.h"
#include "moelab/lib/prompt.h"
#include "moelab/lib/qa_metrics.h"
#include "moelab/lib/router_noise.h"

#include <fmt/ranges.h>

#include <algorithm>
#include <cctype>
#include <chrono>
#include <numeric>

namespace {

// The first standalone capital letter of the text ("B", " B)", "(B)").
std::string first_letter(const std::string& text) {
  for (std::size_t i = 0; i < text.size(); ++i) {
    bool alone = std::isupper(static_cast<unsigned char>(text[i])) && (i + 1 == text.size() || !std::isalpha(static_cast<unsigned char>(text[i + 1])));
    if (alone) return std::string(1, text[i]);
    if (std::isalnum(static_cast<unsigned char>(text[i]))) return "";
  }
  return "";
}

struct Settings {
  std::string dataset, baseline, sampler;
  long long max_new_tokens;
  std::vector<std::string> stop;
  bool add_special_tokens;
  std::size_t batch_size;
  bool static_cache, sort_by_length, continuous_batching;
  long long read_every;
  std::string qa_template;
  moelab::PromptOptions prompt;
};

const moelab::Options<Settings>& options() {
  static const auto o =
      moelab::Options<Settings>("generate", moelab::Kind::stage, "0.2.0", "generation with a baseline and a second sampler, paired metrics")
          .component("dataset", &Settings::dataset, moelab::Kind::dataset, "prompts: {\"prompt\"}, QA {\"question\", \"answers\"}, or multiple choice")
          .optional_component("baseline", &Settings::baseline, moelab::Kind::sampler,
                              "the reference sampler (plain with pick = [\"greedy\"]); empty: none")
          .component("sampler", &Settings::sampler, moelab::Kind::sampler, "the sampler under test (roe, or plain with a sampling pick chain)")
          .integer("max_new_tokens", &Settings::max_new_tokens, 32,
                   "tokens generated per prompt at most (unset: the model's generation_config.json's, if it has one, else 32)")
          .at_least(1)
          .strings("stop", &Settings::stop, {"\n\n"},
                   "generation of a row ends at the first of these strings (cut from the text); also at any eos_token_id of the "
                   "model's config.json and generation_config.json")
          .flag("add_special_tokens", &Settings::add_special_tokens, true,
                "prompts get the special tokens of tokenizer.json's post_processor, as HF's tokenizer(text) (Llama 2: BOS)")
          .integer("batch_size", &Settings::batch_size, 8, "prompts decoded together")
          .at_least(1)
          .flag("static_cache", &Settings::static_cache, true,
                "decode into a KV cache allocated once per batch for its longest prompt + max_new_tokens positions and written "
                "in place (false: a cache that grows by a concatenation per token); both give the same tokens")
          .flag("sort_by_length", &Settings::sort_by_length, true,
                "batches group prompts of similar length, longest first (less padding); generations.jsonl keeps the dataset's order")
          .flag("continuous_batching", &Settings::continuous_batching, true,
                "with static_cache, a row whose prompt ended takes the next waiting prompt at the next read instead of waiting for "
                "the whole batch (greedy text is the same either way; sampled text draws other noise)")
          .integer("read_every", &Settings::read_every, 8,
                   "decoding steps between the host's reads of the new tokens (stop strings, all rows ended); stop ids end a row on "
                   "the device at every step, so any value gives the same text")
          .at_least(1)
          .string("qa_template", &Settings::qa_template, "Question: {question}\nAnswer:", "prompt of a record without choices ({question})")
          .include(&Settings::prompt, moelab::prompt_options());
  return o;
}

// Per MoE layer: noisy rows whose chosen expert set differs from their clean row's, and noisy rows seen.
using ChangeCounts = std::map<int, std::pair<torch::Tensor, long long>>;

// While alive, counts into `counts` every forward that carries replicas of `rows` cached rows: input row
// r continues row r / replicas, and rows with r % replicas == 0 route cleanly (moelab/model.h).
class CountTopkChanges {
 public:
  CountTopkChanges(moelab::Model& model, const moelab::KVCache& cache, long long rows, ChangeCounts& counts) : model_(model) {
    model.set_moe_input_observer([&cache, rows, &counts](int layer, const torch::Tensor&, const torch::Tensor& ids) {
      const long long replicas = cache.replicas;
      if (replicas < 2) return;
      torch::Tensor sets = ids.view({rows, replicas, -1, ids.size(-1)});
      torch::Tensor changed = moelab::topk_set_changed(sets.narrow(1, 1, replicas - 1), sets.narrow(1, 0, 1));
      auto& [count, seen] = counts[layer];
      count = count.defined() ? count + changed.sum() : changed.sum();
      seen += changed.numel();
    });
  }
  ~CountTopkChanges() { model_.set_moe_input_observer({}); }

 private:
  moelab::Model& model_;
};

struct Task {
  std::string id, prompt;
  std::vector<std::string> answers;  // QA gold answers
  std::string letter;                // gold letter of a multiple-choice item
};

class Generate final : public moelab::Stage {
 public:
  Generate(const moelab::Config& config, moelab::RunContext& context)
      : config_(config), settings_(options().read(config)), context_(context), dataset_(context.make<moelab::Dataset>(settings_.dataset)),
        stops_(settings_.stop), max_new_(settings_.max_new_tokens), stop_ids_(moelab::stop_token_ids(context.model_folder())) {
    for (const std::string& id : {settings_.baseline, settings_.sampler})
      if (!id.empty()) samplers_.emplace_back(id, context.make<moelab::Sampler>(id));
    if (samplers_.empty()) throw std::runtime_error(fmt::format("[{}] names no sampler: set sampler (and baseline)", config.id()));
    apply_generation_config(moelab::generation_config(context.model_folder()));
  }

  void run(const std::filesystem::path& out_dir, nlohmann::json& summary) override {
    moelab::log::info("[{}] stop ids: {} (every eos_token_id of the model's config.json and generation_config.json)", config_.id(),
                      stop_ids_.empty() ? "none" : fmt::format("{}", fmt::join(stop_ids_, ", ")));
    if (settings_.add_special_tokens)
      moelab::log::info("[{}] add_special_tokens: {} to each prompt, by tokenizer.json's post_processor", config_.id(),
                        context_.tokenizer().special_tokens_added());
    std::vector<Task> tasks = read_tasks();
    nlohmann::json outputs = nlohmann::json::array();
    for (const auto& t : tasks) outputs.push_back({{"id", t.id}, {"prompt", t.prompt}});
    std::map<std::string, std::map<std::string, std::vector<double>>> scores;  // sampler -> metric -> per task
    for (const auto& [name, sampler] : samplers_) {
      auto start = std::chrono::steady_clock::now();
      long long generated = 0;
      ChangeCounts changes;
      std::vector<std::string> texts = generate_all(*sampler, name, tasks, generated, changes);
      double seconds = std::chrono::duration<double>(std::chrono::steady_clock::now() - start).count();
      if (!changes.empty()) summary[name]["topk_change_rate"] = change_rates(name, changes);
      for (std::size_t i = 0; i < tasks.size(); ++i) {
        outputs[i][name] = texts[i];
        for (const auto& [metric, value] : score(tasks[i], texts[i])) scores[name][metric].push_back(value);
      }
      summary[name]["tokens_per_second"] = generated / std::max(seconds, 1e-9);
      summary[name]["generated_tokens"] = generated;
      for (const auto& [metric, values] : scores[name]) {
        double mean = 0;
        for (double v : values) mean += v / values.size();
        summary[name][metric] = mean;
      }
      moelab::log::info("generate [{}]: {} tokens at {:.1f} tokens/s; {}", name, generated, generated / std::max(seconds, 1e-9),
                        summary[name].dump());
      context_.record_metrics({{"stage", config_.id()}, {"sampler", name}, {"summary", summary[name]}});
    }
    if (samplers_.size() == 2) {
      const std::string &a = samplers_[0].first, &b = samplers_[1].first;
      for (const auto& [metric, values] : scores[a])
        summary["paired"][metric] = moelab::paired_comparison(values, scores[b][metric], context_.seed_for(config_.id() + ".bootstrap"));
      moelab::log::info("generate: {} vs {} (difference = {} - {}): {}", a, b, b, a, summary["paired"].dump());
    }
    std::string lines;
    for (const auto& o : outputs) lines += o.dump() + "\n";
    moelab::write_file_atomic(out_dir / "generations.jsonl", lines);
    summary["prompts"] = tasks.size();
    moelab::log::result(fmt::format("[{}] generate ({} prompts):", config_.id(), tasks.size()), results_table(summary, scores));
  }

 private:
  // One row per sampler (mean of each metric, tokens/s) and, for two samplers, the paired difference with
  // its bootstrap 95% interval (and McNemar p for 0/1 metrics).
  std::string results_table(const nlohmann::json& summary, const std::map<std::string, std::map<std::string, std::vector<double>>>& scores) const {
    if (samplers_.empty() || !scores.count(samplers_[0].first)) return "";
    std::vector<std::string> metrics;
    for (const auto& [metric, values] : scores.at(samplers_[0].first)) metrics.push_back(metric);
    std::string table = "| sampler |", rule = "| --- |";
    for (const auto& m : metrics) table += " " + m + " |", rule += " --- |";
    table += " tokens/s |\n" + rule + " --- |\n";
    for (const auto& [name, sampler] : samplers_) {
      table += "| " + name + " |";
      for (const auto& m : metrics) table += fmt::format(" {:.4f} |", summary[name].value(m, 0.0));
      table += fmt::format(" {:.1f} |\n", summary[name]["tokens_per_second"].get<double>());
    }
    if (summary.contains("paired")) {
      table += fmt::format("| {} - {} |", samplers_[1].first, samplers_[0].first);
      for (const auto& m : metrics) {
        const nlohmann::json& p = summary["paired"][m];
        table += fmt::format(" {:+.4f} [{:+.4f}, {:+.4f}]{} |", p["difference"].get<double>(), p["bootstrap_95"][0].get<double>(),
                             p["bootstrap_95"][1].get<double>(),
                             p.contains("mcnemar_p") ? fmt::format(" McNemar p={:.3g}", p["mcnemar_p"].get<double>()) : "");
      }
      table += " |\n";
    }
    return table;
  }

  std::vector<Task> read_tasks() const {
    moelab::PromptFormat mc = settings_.prompt, qa = mc;
    qa.question_template = settings_.qa_template;
    std::vector<Task> tasks;
    for (std::size_t i = 0; i < dataset_->size(); ++i) {
      const moelab::Example& ex = dataset_->at(i);
      Task t{ex.id, "", {}, ""};
      const auto& r = ex.record;
      if (r.is_object() && r.contains("prompt") && r["prompt"].is_string()) t.prompt = r["prompt"].get<std::string>();
      else t.prompt = moelab::format_prompt(ex, ex.choices.empty() ? qa : mc);
      if (!ex.choices.empty() && ex.answer >= 0) t.letter = ex.letters[ex.answer];
      if (r.is_object() && r.contains("answers")) {
        for (const auto& a : r["answers"])
          if (a.is_string()) t.answers.push_back(a.get<std::string>());
      } else if (r.is_object() && r.contains("answer") && r["answer"].is_string() && ex.choices.empty()) {
        t.answers.push_back(r["answer"].get<std::string>());
      }
      tasks.push_back(std::move(t));
    }
    return tasks;
  }

  // generation_config.json's defaults: max_new_tokens where the table leaves it unset; the sampling and
  // length keys are logged, not applied (each sampler's table sets its pick chain, max_new_tokens bounds rows).
  void apply_generation_config(const nlohmann::json& generation) {
    const nlohmann::json& asked = generation.value("max_new_tokens", nlohmann::json());
    if (asked.is_number_integer() && asked.get<long long>() > 0 && config_.where("max_new_tokens") == "default") {
      max_new_ = asked.get<long long>();
      moelab::log::info("[{}] max_new_tokens = {}, from the model's generation_config.json", config_.id(), max_new_);
    }
    nlohmann::json not_applied = nlohmann::json::object();
    for (const auto& [key, value] : generation.items())
      if (!value.is_null() && key != "max_new_tokens" && key != "eos_token_id" && key != "bos_token_id" && key != "pad_token_id" &&
          key != "transformers_version" && key != "_from_model_config")
        not_applied[key] = value;
    if (!not_applied.empty())
      moelab::log::info("[{}] the model's generation_config.json also asks {}; not applied: each sampler's table sets its pick chain "
                        "and max_new_tokens = {} bounds each row", config_.id(), not_applied.dump(), max_new_);
  }

  // {"layers": {"<decoder layer>": rate}, "mean", "noisy_rows"}; logged per layer.
  nlohmann::json change_rates(const std::string& name, const ChangeCounts& changes) const {
    nlohmann::json layers = nlohmann::json::object();
    double mean = 0;
    std::string shown;
    for (const auto& [layer, counted] : changes) {
      const double rate = counted.first.item<double>() / static_cast<double>(std::max(counted.second, 1LL));
      layers[std::to_string(layer)] = rate;
      mean += rate / static_cast<double>(changes.size());
      shown += fmt::format("{}{}: {:.3f}", shown.empty() ? "" : ", ", layer, rate);
    }
    moelab::log::info("generate [{}]: top-k change rate per MoE layer (noisy rows whose expert set differs from the clean row's; a layer "
                      "also carries what the noise of the layers before it changed): {}", name, shown);
    return {{"layers", layers}, {"mean", mean}, {"noisy_rows", changes.begin()->second.second}};
  }

  static std::map<std::string, double> score(const Task& t, const std::string& text) {
    std::map<std::string, double> s;
    if (!t.letter.empty()) s["accuracy"] = first_letter(text) == t.letter;
    if (!t.answers.empty()) {
      double em = 0, f1 = 0;
      for (const auto& a : t.answers) {
        em = std::max(em, moelab::squad_exact_match(text, a));
        f1 = std::max(f1, moelab::squad_f1(text, a));
      }
      s["exact_match"] = em;
      s["f1"] = f1;
    }
    return s;
  }

  std::vector<std::string> generate_all(moelab::Sampler& sampler, const std::string& name, const std::vector<Task>& tasks, long long& generated,
                                        ChangeCounts& changes) {
    torch::NoGradGuard no_grad;
    moelab::Model& model = context_.model();
    const moelab::Tokenizer& tokenizer = context_.tokenizer();
    const std::size_t batch_size = settings_.batch_size, max_len = settings_.prompt.max_len;
    std::vector<moelab::McItem> prompts(tasks.size());
    for (std::size_t i = 0; i < tasks.size(); ++i) {
      std::vector<std::int64_t>& ids = prompts[i].prompt_ids;
      ids = tokenizer.encode(tasks[i].prompt, settings_.add_special_tokens);
      if (ids.empty()) throw std::runtime_error(fmt::format("prompt of '{}' is empty", tasks[i].id));
      if (ids.size() > max_len) ids.erase(ids.begin(), ids.end() - static_cast<long>(max_len));
    }
    // Batches of prompts of similar length (less padding) when sort_by_length; texts keep the dataset's order.
    std::vector<std::size_t> order(tasks.size());
    std::iota(order.begin(), order.end(), 0);
    if (settings_.sort_by_length)
      std::stable_sort(order.begin(), order.end(), [&](std::size_t a, std::size_t b) { return prompts[a].prompt_ids.size() > prompts[b].prompt_ids.size(); });
    // torchrun: each rank decodes every world-th prompt of that order (similar lengths on every rank); the texts,
    // token counts and top-k changes are gathered below.
    const int world = moelab::distributed::data_parallel() ? moelab::distributed::world_size() : 1;
    if (world > 1) {
      std::vector<std::size_t> mine;
      for (std::size_t i = static_cast<std::size_t>(moelab::distributed::rank()); i < order.size(); i += static_cast<std::size_t>(world))
        mine.push_back(order[i]);
      moelab::log::info("[{}] {}: rank {} of {} decodes {} of the {} prompts", config_.id(), name, moelab::distributed::rank(), world, mine.size(),
                        order.size());
      order = std::move(mine);
    }
    std::vector<std::string> texts(tasks.size());
    moelab::Progress progress("generate " + name, static_cast<long long>(order.size()), "tokens");
    std::size_t longest = 0;
    for (const auto& p : prompts) longest = std::max(longest, p.prompt_ids.size());
    // The largest cache a batch of this stage holds, checked against the device's memory before any forward.
    if (!order.empty()) {
      const auto rows = static_cast<std::int64_t>(std::min(batch_size, order.size()));
      const std::int64_t positions = static_cast<std::int64_t>(longest) - 1 + max_new_;
      const std::int64_t bytes = moelab::require_kv_cache_fits(
          model, rows, positions, fmt::format("[{0}] batch_size rows, the longest prompt (at most [{0}] prompt.max_len) + max_new_tokens positions", config_.id()));
      moelab::log::info("[{}] {}: KV cache of {} rows x {} positions: {:.2f} GiB", config_.id(), name, rows, positions,
                        static_cast<double>(bytes) / (1024.0 * 1024.0 * 1024.0));
    }
    const bool continuous = settings_.continuous_batching && settings_.static_cache;
    const auto on_device = torch::dtype(torch::kInt64).device(model.device());
    const torch::Tensor stop_ids = torch::tensor(stop_ids_, torch::kInt64).to(model.device());
    constexpr std::size_t kIdle = static_cast<std::size_t>(-1);
    // Batches of batch_size rows; with continuous batching one batch, whose finished rows take waiting prompts.
    for (std::size_t queued = 0; queued < order.size();) {
      const std::size_t batch_start = queued;
      std::vector<std::size_t> member;  // per row: the task it decodes, kIdle when none
      for (; queued < order.size() && member.size() < batch_size; ++queued) member.push_back(order[queued]);
      const std::int64_t B = static_cast<std::int64_t>(member.size());
      Prefill first = prefill(model, prompts, member, nullptr);
      moelab::KVCache cache;
      if (settings_.static_cache) {
        cache.capacity = (continuous ? static_cast<std::int64_t>(longest) : first.width) - 1 + max_new_;
        cache.capacity_key = fmt::format("[{}] prompt.max_len + max_new_tokens", config_.id());
      }
      if (first.width > 1) model.forward(first.context, first.context_mask, &cache, true);
      torch::Tensor last = first.last, history = first.history;
      // On the device: each row's tokens by its own step (-1 once the row met a stop id, which is not kept).
      torch::Tensor decoded = torch::full({B, max_new_}, -1, on_device);
      torch::Tensor ended = torch::zeros({B}, on_device.dtype(torch::kBool));
      torch::Tensor row_step = torch::zeros({B}, on_device);
      std::vector<long long> steps(member.size(), 0), read(member.size(), 0);
      std::vector<std::vector<std::int64_t>> out(member.size());
      CountTopkChanges count_changes(model, cache, B, changes);
      for (long long step = 0;; ++step) {
        torch::Tensor next = sampler.next(model, last, cache, static_cast<std::int64_t>(batch_start) * max_new_ + step, history);
        if (stop_ids.numel() > 0) ended.logical_or_(torch::isin(next, stop_ids));
        decoded.scatter_(1, row_step.clamp_max(static_cast<std::int64_t>(max_new_ - 1)).unsqueeze(1), next.masked_fill(ended, -1).unsqueeze(1));
        row_step.add_(1);
        last = next.unsqueeze(1);
        history = torch::cat({history, last}, 1);
        bool row_at_limit = false;
        for (std::size_t r = 0; r < member.size(); ++r) {
          ++steps[r];
          row_at_limit = row_at_limit || (member[r] != kIdle && steps[r] >= max_new_);
        }
        if ((step + 1) % settings_.read_every != 0 && !row_at_limit) continue;
        // The host's read: each row's new tokens, stop strings, rows that ended.
        const torch::Tensor host = decoded.cpu();
        std::vector<std::int64_t> freed;
        for (std::size_t r = 0; r < member.size(); ++r) {
          if (member[r] == kIdle) continue;
          const std::size_t kept = out[r].size();
          const auto* row = host[static_cast<std::int64_t>(r)].data_ptr<std::int64_t>();
          bool done = false;
          for (long long i = read[r]; i < std::min<long long>(steps[r], max_new_) && !done; ++i) {
            if (row[i] < 0) done = true;
            else out[r].push_back(row[i]);
          }
          read[r] = std::min<long long>(steps[r], max_new_);
          done = end_at_stop_string(tokenizer, out[r], kept) || done || steps[r] >= max_new_;
          generated += static_cast<long long>(out[r].size() - kept);
          if (!done) continue;
          texts[member[r]] = cut_at_stop(tokenizer.decode(out[r]));
          progress.advance(static_cast<long long>(out[r].size()));
          member[r] = kIdle;
          freed.push_back(static_cast<std::int64_t>(r));
        }
        if (std::all_of(member.begin(), member.end(), [](std::size_t m) { return m == kIdle; }) && (!continuous || queued == order.size())) break;
        if (!continuous || freed.empty()) continue;
        // Continuous batching: freed rows take the next prompts (their prefill in a batch of their own); rows
        // left without one restart from an empty cache row, so an idle row never outgrows the cache.
        std::vector<std::size_t> newcomers;
        for (; queued < order.size() && newcomers.size() < freed.size(); ++queued) newcomers.push_back(order[queued]);
        Prefill fresh = prefill(model, prompts, newcomers, &history);
        moelab::KVCache fresh_cache;
        if (!newcomers.empty() && fresh.width > 1) model.forward(fresh.context, fresh.context_mask, &fresh_cache, true);
        for (std::size_t j = 0; j < freed.size(); ++j) {
          const std::int64_t r = freed[j];
          if (j < newcomers.size() && fresh.width > 1) cache.replace_row(r, fresh_cache, static_cast<std::int64_t>(j));
          else cache.clear_row(r);
          if (j < newcomers.size()) {
            member[static_cast<std::size_t>(r)] = newcomers[j];
            last[r].copy_(fresh.last[static_cast<std::int64_t>(j)]);
            history[r].copy_(fresh.history[static_cast<std::int64_t>(j)]);
          }
          steps[static_cast<std::size_t>(r)] = read[static_cast<std::size_t>(r)] = 0;
          out[static_cast<std::size_t>(r)].clear();
        }
        const torch::Tensor rows = torch::tensor(freed, torch::kInt64).to(model.device());
        ended.index_fill_(0, rows, false);
        row_step.index_fill_(0, rows, 0);
        decoded.index_fill_(0, rows, -1);
      }
    }
    progress.finish();
    if (world > 1) gather_generations(name, order, texts, generated, changes);
    return texts;
  }

  // Every rank's texts (by task), generated token counts and top-k change counts, on every rank.
  void gather_generations(const std::string& name, const std::vector<std::size_t>& mine, std::vector<std::string>& texts, long long& generated,
                          ChangeCounts& changes) const {
    nlohmann::json part = {{"texts", nlohmann::json::array()}, {"generated", generated}, {"changes", nlohmann::json::object()}};
    for (std::size_t task : mine) part["texts"].push_back({task, texts[task]});
    for (const auto& [layer, counted] : changes)
      part["changes"][std::to_string(layer)] = {counted.first.item<double>(), counted.second};
    generated = 0;
    changes.clear();
    for (const auto& rank_part : moelab::distributed::all_gather_json(part, fmt::format("[{}] gathering the {} generations", config_.id(), name))) {
      for (const auto& t : rank_part["texts"]) texts[t[0].get<std::size_t>()] = t[1].get<std::string>();
      generated += rank_part["generated"].get<long long>();
      for (const auto& [layer, counted] : rank_part["changes"].items()) {
        auto& [count, seen] = changes[std::stoi(layer)];
        if (!count.defined()) count = torch::zeros({}, torch::kFloat64);
        count = count + counted[0].get<double>();
        seen += counted[1].get<long long>();
      }
    }
  }

  // A batch's prompts ready to decode: all but the last token (the context, left-padded) and the last
  // token of each row, and each row's tokens so far for the pickers (-1 on the padding).
  struct Prefill {
    torch::Tensor context, context_mask, last, history;
    std::int64_t width = 0;
  };

  // `history_like`: widen the newcomers' history (left, -1) to that batch's history width, or that one to theirs.
  Prefill prefill(moelab::Model& model, const std::vector<moelab::McItem>& prompts, const std::vector<std::size_t>& members,
                  torch::Tensor* history_like) const {
    Prefill p;
    if (members.empty()) return p;
    std::vector<const moelab::McItem*> rows;
    for (std::size_t i : members) rows.push_back(&prompts[i]);
    moelab::McBatch batch = moelab::make_batch(rows, std::max<long long>(model.info().pad_token_id, 0));
    p.width = batch.input_ids.size(1);
    p.context = batch.input_ids.narrow(1, 0, p.width - 1);
    p.context_mask = batch.attention_mask.narrow(1, 0, p.width - 1);
    p.last = batch.input_ids.narrow(1, p.width - 1, 1).to(model.device());
    p.history = batch.input_ids.masked_fill(batch.attention_mask.eq(0), -1).to(model.device());
    if (history_like) {
      const std::int64_t wide = history_like->size(1);
      if (p.history.size(1) < wide)
        p.history = torch::cat({torch::full({p.history.size(0), wide - p.history.size(1)}, -1, p.history.options()), p.history}, 1);
      else if (p.history.size(1) > wide)
        *history_like = torch::cat({torch::full({history_like->size(0), p.history.size(1) - wide}, -1, history_like->options()), *history_like}, 1);
    }
    return p;
  }

  std::string cut_at_stop(std::string text) const {
    for (const auto& stop : stops_)
      if (!stop.empty() && text.find(stop) != std::string::npos) text = text.substr(0, text.find(stop));
    return text;
  }

  // Whether the row's text now holds a stop string; if so its tokens end with the one that completed the
  // first (as if each token had been checked when it came). Tokens before `checked` were checked before.
  bool end_at_stop_string(const moelab::Tokenizer& tokenizer, std::vector<std::int64_t>& tokens, std::size_t checked) const {
    auto has_stop = [&](std::size_t count) {
      const std::string text = tokenizer.decode({tokens.begin(), tokens.begin() + static_cast<std::ptrdiff_t>(count)});
      return std::any_of(stops_.begin(), stops_.end(), [&](const std::string& stop) { return !stop.empty() && text.find(stop) != std::string::npos; });
    };
    if (stops_.empty() || tokens.size() == checked || !has_stop(tokens.size())) return false;
    std::size_t count = checked + 1;
    while (count < tokens.size() && !has_stop(count)) ++count;
    tokens.resize(count);
    return true;
  }

  moelab::Config config_;  // for where a key was set (generation_config.json fills only unset keys)
  Settings settings_;
  moelab::RunContext& context_;
  std::shared_ptr<moelab::Dataset> dataset_;
  std::vector<std::pair<std::string, std::shared_ptr<moelab::Sampler>>> samplers_;
  std::vector<std::string> stops_;
  long long max_new_;
  std::vector<std::int64_t> stop_ids_;  // a row ends at any of these, which is not kept
};

}  // namespace

MOELAB_PLUGIN(options, Generate)
