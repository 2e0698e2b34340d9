#include "moelab/lib/lm_eval_results.h"

#include <fmt/format.h>

#include <cmath>
#include <ctime>
#include <stdexcept>

namespace moelab::lm_eval {

namespace {

using nlohmann::json;
using nlohmann::ordered_json;

// The YAML of each task (lm-eval 0.4: lm_eval/tasks/{arc,openbookqa,sciq,hellaswag,winogrande,piqa}).
std::vector<TaskDefinition> make_tasks() {
  const std::vector<std::string> acc_norm = {"acc", "acc_norm"};
  std::vector<TaskDefinition> t;
  for (const auto& [name, subset] : {std::pair{"arc_easy", "ARC-Easy"}, std::pair{"arc_challenge", "ARC-Challenge"}}) {
    TaskDefinition arc;
    arc.name = name;
    arc.form = "arc";
    arc.tags = {"ai2_arc"};
    arc.dataset_path = "allenai/ai2_arc";
    arc.dataset_name = subset;
    arc.training_split = "train", arc.validation_split = "validation", arc.test_split = "test";
    arc.doc_to_text = "Question: {{question}}\nAnswer:";
    arc.doc_to_target = "{{choices.label.index(answerKey)}}";
    arc.doc_to_choice = "{{choices.text}}";
    arc.metrics = acc_norm;
    arc.decontamination_query = "Question: {{question}}\nAnswer:";
    t.push_back(arc);
  }
  TaskDefinition obqa;
  obqa.name = obqa.form = "openbookqa";
  obqa.dataset_path = "allenai/openbookqa";
  obqa.dataset_name = "main";
  obqa.training_split = "train", obqa.validation_split = "validation", obqa.test_split = "test";
  obqa.doc_to_text = "question_stem";
  obqa.doc_to_target = "{{choices.label.index(answerKey.lstrip())}}";
  obqa.doc_to_choice = "{{choices.text}}";
  obqa.metrics = acc_norm;
  obqa.decontamination_query = "question_stem";
  t.push_back(obqa);
  TaskDefinition sciq;
  sciq.name = sciq.form = "sciq";
  sciq.dataset_path = "allenai/sciq";
  sciq.training_split = "train", sciq.validation_split = "validation", sciq.test_split = "test";
  sciq.doc_to_text = "{{support.lstrip()}}\nQuestion: {{question}}\nAnswer:";
  sciq.doc_to_target = "3";
  sciq.doc_to_choice = "{{[distractor1, distractor2, distractor3, correct_answer]}}";
  sciq.metrics = acc_norm;
  sciq.decontamination_query = "{{support}} {{question}}";
  t.push_back(sciq);
  TaskDefinition hellaswag;
  hellaswag.name = hellaswag.form = "hellaswag";
  hellaswag.tags = {"multiple_choice"};
  hellaswag.dataset_path = "Rowan/hellaswag";
  hellaswag.training_split = "train", hellaswag.validation_split = "validation";
  hellaswag.doc_to_text = "{{query}}";
  hellaswag.doc_to_target = "{{label}}";
  hellaswag.doc_to_choice = "choices";
  hellaswag.metrics = acc_norm;
  t.push_back(hellaswag);
  TaskDefinition winogrande;
  winogrande.name = winogrande.form = "winogrande";
  winogrande.dataset_path = "allenai/winogrande";
  winogrande.dataset_name = "winogrande_xl";
  winogrande.training_split = "train", winogrande.validation_split = "validation";
  winogrande.doc_to_text = "preprocess_winogrande.doc_to_text";
  winogrande.doc_to_target = "preprocess_winogrande.doc_to_target";
  winogrande.doc_to_choice = "preprocess_winogrande.doc_to_choice";
  winogrande.metrics = {"acc"};
  winogrande.target_is_continuation = true;
  winogrande.decontamination_query = "sentence";
  t.push_back(winogrande);
  TaskDefinition piqa;
  piqa.name = piqa.form = "piqa";
  piqa.dataset_path = "baber/piqa";
  piqa.training_split = "train", piqa.validation_split = "validation";
  piqa.doc_to_text = "Question: {{goal}}\nAnswer:";
  piqa.doc_to_target = "label";
  piqa.doc_to_choice = "{{[sol1, sol2]}}";
  piqa.metrics = acc_norm;
  piqa.decontamination_query = "goal";
  t.push_back(piqa);
  return t;
}

// lm-eval's sanitize_model_name: each run of "<>:/\|?*[] becomes "__".
std::string sanitized(const std::string& name) {
  static const std::string kSpecial = "\"<>:/\\|?*[]";
  std::string out;
  for (std::size_t i = 0; i < name.size();) {
    if (kSpecial.find(name[i]) == std::string::npos) {
      out += name[i++];
      continue;
    }
    while (i < name.size() && kSpecial.find(name[i]) != std::string::npos) ++i;
    out += "__";
  }
  return out;
}

double seconds_since_epoch(std::chrono::system_clock::time_point t) {
  return std::chrono::duration<double>(t.time_since_epoch()).count();
}

ordered_json ordered(const json& j) { return ordered_json::parse(j.dump()); }

}  // namespace

const std::vector<TaskDefinition>& tasks() {
  static const std::vector<TaskDefinition> all = make_tasks();
  return all;
}

const TaskDefinition* find_task(std::string_view name) {
  for (const auto& t : tasks())
    if (t.name == name) return &t;
  return nullptr;
}

double mean(const std::vector<double>& values) {
  if (values.empty()) throw std::invalid_argument("lm_eval::mean of no values");
  double sum = 0;
  for (double v : values) sum += v;
  return sum / static_cast<double>(values.size());
}

json mean_stderr(const std::vector<double>& values) {
  if (values.size() < 2) return "N/A";
  const double mu = mean(values);
  double squares = 0;
  for (double v : values) squares += (v - mu) * (v - mu);
  const double n = static_cast<double>(values.size());
  return std::sqrt(squares / (n - 1)) / std::sqrt(n);
}

ordered_json task_config(const TaskDefinition& task, const json& metadata) {
  json metrics = json::array();
  for (const auto& m : task.metrics) metrics.push_back({{"metric", m}, {"aggregation", "mean"}, {"higher_is_better", true}});
  ordered_json c;
  c["task"] = task.name;
  if (!task.tags.empty()) c["tag"] = task.tags;
  c["dataset_path"] = task.dataset_path;
  if (!task.dataset_name.is_null()) c["dataset_name"] = task.dataset_name;
  for (const auto& [key, split] : {std::pair{"training_split", &task.training_split}, std::pair{"validation_split", &task.validation_split},
                                   std::pair{"test_split", &task.test_split}})
    if (!split->is_null()) c[key] = *split;
  c["doc_to_text"] = task.doc_to_text;
  c["doc_to_target"] = task.doc_to_target;
  c["doc_to_choice"] = task.doc_to_choice;
  c["description"] = "";
  c["target_delimiter"] = " ";
  c["fewshot_delimiter"] = "\n\n";
  c["num_fewshot"] = 0;
  c["metric_list"] = ordered(metrics);
  c["output_type"] = "multiple_choice";
  c["repeats"] = 1;
  c["should_decontaminate"] = !task.decontamination_query.is_null();
  if (!task.decontamination_query.is_null()) c["doc_to_decontamination_query"] = task.decontamination_query;
  ordered_json meta = {{"version", task.version}};
  for (const auto& [key, value] : metadata.items()) meta[key] = ordered(value);
  c["metadata"] = meta;
  return c;
}

std::string python_float(double value) {
  if (std::isnan(value)) return "nan";
  if (std::isinf(value)) return value > 0 ? "inf" : "-inf";
  return json(value).dump();  // shortest round-trip digits, ".0" on integers, "e-05" exponents: as Python's repr
}

std::string date_id(std::chrono::system_clock::time_point time) {
  const auto micros = std::chrono::duration_cast<std::chrono::microseconds>(time.time_since_epoch()).count();
  const std::time_t seconds = static_cast<std::time_t>(micros / 1000000);
  std::tm utc{};
  gmtime_r(&seconds, &utc);
  char text[32];
  std::strftime(text, sizeof text, "%Y-%m-%dT%H-%M-%S", &utc);
  return fmt::format("{}.{:06d}", text, micros % 1000000);
}

ordered_json results_file(const std::vector<TaskResult>& results, const RunInfo& run) {
  ordered_json out;
  out["results"] = ordered_json::object();
  for (const auto& r : results) {
    if (r.samples.empty()) throw std::invalid_argument(fmt::format("lm-eval results: task {} has no samples", r.name));
    ordered_json row = {{"alias", r.name}};
    for (const auto& metric : r.metrics) {
      std::vector<double> values;
      for (const auto& s : r.samples) {
        const auto it = s.metrics.find(metric);
        if (it == s.metrics.end()) throw std::invalid_argument(fmt::format("lm-eval results: a {} sample has no {}", r.name, metric));
        values.push_back(it->second);
      }
      row[metric + ",none"] = mean(values);
      row[metric + "_stderr,none"] = ordered(mean_stderr(values));
    }
    out["results"][r.name] = row;
  }
  ordered_json group_subtasks, configs, versions, n_shot, higher, n_samples;
  for (const auto& r : results) {
    group_subtasks[r.name] = ordered_json::array();
    configs[r.name] = r.config;
    versions[r.name] = r.version;
    n_shot[r.name] = 0;
    for (const auto& metric : r.metrics) higher[r.name][metric] = true;
    n_samples[r.name] = {{"original", r.samples.size()}, {"effective", r.samples.size()}};
  }
  out["group_subtasks"] = group_subtasks;
  out["configs"] = configs;
  out["versions"] = versions;
  out["n-shot"] = n_shot;
  out["higher_is_better"] = higher;
  out["n-samples"] = n_samples;
  ordered_json config = {{"model", run.model}, {"model_args", run.model_args}};
  for (const auto& [key, value] : run.config_extra.items()) config[key] = value;
  out["config"] = config;
  out["git_hash"] = ordered(run.git_hash);
  out["date"] = seconds_since_epoch(run.start);
  out["max_length"] = run.max_length;
  out["model_source"] = run.model;
  out["model_name"] = run.model_name;
  out["model_name_sanitized"] = sanitized(run.model_name);
  out["system_instruction"] = nullptr;
  out["system_instruction_sha"] = nullptr;
  out["fewshot_as_multiturn"] = false;
  out["chat_template"] = nullptr;
  out["chat_template_sha"] = nullptr;
  out["start_time"] = seconds_since_epoch(run.start);
  out["end_time"] = seconds_since_epoch(run.end);
  out["total_evaluation_time_seconds"] = python_float(seconds_since_epoch(run.end) - seconds_since_epoch(run.start));  // a string, as lm-eval
  return out;
}

std::string samples_file(const TaskResult& result) {
  std::string out;
  for (std::size_t doc_id = 0; doc_id < result.samples.size(); ++doc_id) {
    const Sample& s = result.samples[doc_id];
    if (s.arguments.size() != s.resps.size())
      throw std::invalid_argument(fmt::format("lm-eval samples: {} doc {} has {} requests but {} responses", result.name, doc_id,
                                              s.arguments.size(), s.resps.size()));
    ordered_json line;
    line["doc_id"] = doc_id;
    line["doc"] = ordered(s.doc);
    line["target"] = ordered(s.target);
    ordered_json arguments = ordered_json::object(), resps = ordered_json::array(), filtered = ordered_json::array();
    for (std::size_t i = 0; i < s.arguments.size(); ++i) {
      arguments["gen_args_" + std::to_string(i)] = {{"arg_0", s.arguments[i].first}, {"arg_1", s.arguments[i].second}};
      const ordered_json response = {python_float(s.resps[i].loglik), s.resps[i].is_greedy ? "True" : "False"};
      resps.push_back(ordered_json::array({response}));
      filtered.push_back(response);
    }
    line["arguments"] = arguments;
    line["resps"] = resps;
    line["filtered_resps"] = filtered;
    line["filter"] = "none";
    line["metrics"] = result.metrics;
    for (const auto& metric : result.metrics) {
      const auto it = s.metrics.find(metric);
      if (it == s.metrics.end()) throw std::invalid_argument(fmt::format("lm-eval samples: {} doc {} has no {}", result.name, doc_id, metric));
      line[metric] = it->second;
    }
    out += line.dump() + "\n";
  }
  return out;
}

}  // namespace moelab::lm_eval
