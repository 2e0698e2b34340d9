// lm-evaluation-harness's output files for multiple-choice tasks, so the tools that read lm-eval's
// results (leaderboards, notebooks, its --log_samples readers) read moelab's evaluations unchanged:
// the aggregated results file (results[task]["acc,none"], "configs", "versions", "n-samples", ...) and
// one samples_<task>_<date>.jsonl line per question, as lm-eval's EvaluationTracker writes them.
// Every metric here (acc, acc_norm) aggregates by mean, so its stderr is lm-eval's mean_stderr; the
// content hashes lm-eval adds (doc_hash, prompt_hash, target_hash, task_hashes) are not written.
#pragma once

#include "moelab/lib/loglik.h"

#include <nlohmann/json.hpp>

#include <chrono>
#include <cstddef>
#include <map>
#include <string>
#include <string_view>
#include <vector>

namespace moelab::lm_eval {

// An lm-eval multiple-choice task as its YAML defines it (lm_eval/tasks/<name>/*.yaml), for configs[task].
struct TaskDefinition {
  std::string name;
  std::string form;  // the jsonl dataset's record form that carries it ("arc" for both ARC tasks)
  std::vector<std::string> tags;
  std::string dataset_path;
  nlohmann::json dataset_name;  // string or null
  nlohmann::json training_split, validation_split, test_split;
  std::string doc_to_text, doc_to_target, doc_to_choice;
  std::vector<std::string> metrics;  // lm-eval's metric_list: acc (and acc_norm), mean, higher is better
  bool target_is_continuation = false;  // Winogrande: doc_to_target is the continuation text, not an index
  nlohmann::json decontamination_query;  // string or null (no should_decontaminate)
  double version = 1.0;
};

// The tasks moelab's dataset forms implement: arc_easy, arc_challenge, openbookqa, sciq, hellaswag,
// winogrande, piqa; find_task gives nullptr for another name.
const std::vector<TaskDefinition>& tasks();
const TaskDefinition* find_task(std::string_view name);

// The mean and lm-eval's stderr of a mean (sample standard deviation / sqrt(n)); "N/A" for n < 2.
double mean(const std::vector<double>& values);
nlohmann::json mean_stderr(const std::vector<double>& values);

// One question: its loglikelihood requests (context, continuation) and their results, one per choice.
struct Sample {
  nlohmann::json doc;     // the record as the dataset prepared it
  nlohmann::json target;  // the gold choice index, or the continuation text (target_is_continuation)
  std::vector<std::pair<std::string, std::string>> arguments;
  std::vector<LoglikResult> resps;
  std::map<std::string, double> metrics;  // "acc" -> 1.0 or 0.0, ...
};

// One task's evaluation of one model.
struct TaskResult {
  std::string name;                  // results key (lm-eval's task name, or a moelab variant)
  nlohmann::ordered_json config;     // configs[name] (task_config() gives lm-eval's)
  double version = 1.0;
  std::vector<std::string> metrics;  // in report order
  std::vector<Sample> samples;
};

// configs[task] as lm-eval's dump_config writes it; `metadata` joins {"version": ...}.
nlohmann::ordered_json task_config(const TaskDefinition& task, const nlohmann::json& metadata = nlohmann::json::object());

// What ran: lm-eval's "config" block and the evaluation tracker's timing fields.
struct RunInfo {
  std::string model = "moelab";
  std::string model_args;        // "pretrained=<folder>,dtype=...": lm-eval's model_args string
  std::string model_name;        // shown and sanitized into model_name_sanitized
  nlohmann::ordered_json config_extra = nlohmann::ordered_json::object();  // further "config" keys (batch_size, device, ...)
  nlohmann::json git_hash;       // string or null
  long long max_length = 0;      // the model's context in tokens (lm-eval's max_length)
  std::chrono::system_clock::time_point start, end;
};

// The results file (lm-eval's results_<date>.json) for `results`, one model.
nlohmann::ordered_json results_file(const std::vector<TaskResult>& results, const RunInfo& run);
// The samples file of one task, one JSON line per question in lm-eval's --log_samples layout.
std::string samples_file(const TaskResult& result);
// lm-eval's file date: the ISO time with ':' as '-' ("2026-12-01T23-04-05.123456"), here in UTC.
std::string date_id(std::chrono::system_clock::time_point time);
// Python's str(float) for finite values ("-5.0", "-0.125", "1e-05"), "inf", "-inf" and "nan" otherwise.
std::string python_float(double value);

}  // namespace moelab::lm_eval
