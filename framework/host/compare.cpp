#include "compare.h"

#include "moelab/lib/files.h"
#include "moelab/lib/log.h"
#include "moelab/lib/paired.h"

#include <fmt/format.h>
#include <toml++/toml.h>

#include <set>
#include <sstream>
#include <stdexcept>

namespace moelab {

namespace fs = std::filesystem;

namespace {

void flatten(const nlohmann::json& node, const std::string& path, std::map<std::string, double>& out) {
  if (node.is_number()) out[path] = node.get<double>();
  else if (node.is_object())
    for (const auto& [key, value] : node.items()) flatten(value, path + "." + key, out);
  else if (node.is_array())
    for (std::size_t i = 0; i < node.size(); ++i) flatten(node[i], path + "." + std::to_string(i), out);
}

void flatten_toml(const toml::table& table, const std::string& prefix, std::map<std::string, std::string>& out) {
  for (const auto& [key, node] : table) {
    const std::string path = prefix.empty() ? std::string(key.str()) : prefix + "." + std::string(key.str());
    if (const toml::table* sub = node.as_table()) {
      flatten_toml(*sub, path, out);
    } else {
      std::ostringstream text;
      node.visit([&](const auto& value) { text << value; });
      // Floats as the shortest text that reads back the same (0.1, not 0.10000000000000001).
      out[path] = node.is_floating_point() ? number_text(*node.value<double>()) : text.str();
    }
  }
}

// A sweep folder's points' run folders (those that were started), in point order.
std::vector<fs::path> sweep_points(const fs::path& sweep_dir) {
  std::vector<fs::path> runs;
  const toml::table sweep = toml::parse_file((sweep_dir / "sweep.toml").string());
  if (const toml::array* points = sweep["point"].as_array())
    for (const auto& point : *points)
      if (auto dir = point.as_table()->get_as<std::string>("run_dir"); dir && fs::exists(fs::path(dir->get()) / "summary.json"))
        runs.emplace_back(dir->get());
  return runs;
}

std::string cell(std::string text) {
  for (auto& c : text)
    if (c == '|' || c == '\n') c = c == '|' ? '/' : ' ';
  return text;
}

struct Run {
  fs::path dir;
  std::string label;  // A, B, ...
  nlohmann::json summary;
  std::map<std::string, std::string> config;
  std::map<std::string, double> metrics;
};

// One run's per-question correctness on `metric` of the system it evaluated last (finetuned routers
// when it has them, else the base model), by question id; "" system when the file is not usable.
struct Answers {
  std::string system;
  std::vector<std::string> ids;
  std::map<std::string, std::string> gold;
  std::map<std::string, std::map<std::string, std::string>> predicted;  // metric -> id -> letter
};

Answers read_answers(const fs::path& file) {
  Answers a;
  const nlohmann::json rows = read_json(file);
  if (!rows.is_array() || rows.empty() || !rows[0].is_object()) return a;
  a.system = rows[0].contains("finetuned") ? "finetuned" : "base";
  for (const auto& row : rows) {
    if (!row.contains("id") || !row.contains("gold") || !row.contains(a.system) || !row[a.system].is_object()) return {};
    const std::string id = row["id"].is_string() ? row["id"].get<std::string>() : row["id"].dump();
    a.ids.push_back(id);
    a.gold[id] = row["gold"].get<std::string>();
    for (const auto& [metric, value] : row[a.system].items())
      if (value.is_string()) a.predicted[metric][id] = value.get<std::string>();
  }
  return a;
}

void paired_tables(const std::vector<Run>& runs, std::ostream& out) {
  out << "\n## Paired tests (runs that evaluated the same questions)\n\n";
  std::string table;
  for (std::size_t i = 0; i < runs.size(); ++i)
    for (std::size_t j = i + 1; j < runs.size(); ++j) {
      const Run &a = runs[i], &b = runs[j];
      const nlohmann::json stages = a.summary.value("stages", nlohmann::json::object());
      for (const auto& [stage, _] : stages.items()) {
        const fs::path file_a = a.dir / stage / "predictions.json", file_b = b.dir / stage / "predictions.json";
        if (!fs::exists(file_a) || !fs::exists(file_b)) continue;
        const Answers answers_a = read_answers(file_a), answers_b = read_answers(file_b);
        if (answers_a.system.empty() || answers_b.system.empty()) continue;
        if (answers_a.gold != answers_b.gold) {
          log::info("compare: [{}] of {} and {} evaluated different questions; no paired test", stage, a.label, b.label);
          continue;
        }
        for (const auto& [metric, predicted_a] : answers_a.predicted) {
          auto other = answers_b.predicted.find(metric);
          if (other == answers_b.predicted.end()) continue;
          std::vector<double> correct_a, correct_b;
          for (const std::string& id : answers_a.ids) {
            correct_a.push_back(predicted_a.at(id) == answers_a.gold.at(id) ? 1.0 : 0.0);
            auto found = other->second.find(id);
            correct_b.push_back(found != other->second.end() && found->second == answers_a.gold.at(id) ? 1.0 : 0.0);
          }
          const nlohmann::json p = paired_comparison(correct_a, correct_b, /*seed=*/0);
          double mean_a = 0, mean_b = 0;
          for (std::size_t q = 0; q < correct_a.size(); ++q) mean_a += correct_a[q], mean_b += correct_b[q];
          mean_a /= static_cast<double>(correct_a.size());
          mean_b /= static_cast<double>(correct_b.size());
          table += fmt::format("| {} vs {} | {} | {} | {} {} {:.2f}% | {} {} {:.2f}% | {} | {:+.2f} [{:+.2f}, {:+.2f}] | {:.6g} | {} / {} |\n", a.label,
                               b.label, stage, metric, a.label, answers_a.system, 100 * mean_a, b.label, answers_b.system, 100 * mean_b,
                               correct_a.size(), 100 * p["difference"].get<double>(), 100 * p["bootstrap_95"][0].get<double>(),
                               100 * p["bootstrap_95"][1].get<double>(), p["mcnemar_p"].get<double>(), p["a_only"].get<long long>(),
                               p["b_only"].get<long long>());
        }
      }
    }
  if (table.empty()) {
    out << "(none: no two runs have an evaluation stage with predictions.json on the same questions)\n";
    return;
  }
  out << "| runs | stage | metric | first | second | questions | difference, points (bootstrap 95%) | McNemar p | first-only / "
         "second-only correct |\n| --- | --- | --- | --- | --- | --- | --- | --- | --- |\n"
      << table;
}

}  // namespace

std::map<std::string, double> summary_metrics(const nlohmann::json& summary) {
  std::map<std::string, double> out;
  if (summary.contains("stages") && summary["stages"].is_object())
    for (const auto& [stage, values] : summary["stages"].items()) flatten(values, stage, out);
  return out;
}

std::map<std::string, std::string> config_values(const fs::path& run_dir) {
  const fs::path file = run_dir / "config.resolved.toml";
  try {
    std::map<std::string, std::string> out;
    flatten_toml(toml::parse_file(file.string()), "", out);
    return out;
  } catch (const toml::parse_error& e) {
    throw std::runtime_error(fmt::format("{}:{}: invalid TOML: {}", file.string(), e.source().begin.line, e.description()));
  }
}

std::string number_text(double value) { return fmt::format("{}", value); }

void compare_runs(const std::vector<fs::path>& folders, std::ostream& out) {
  std::vector<Run> runs;
  for (const fs::path& folder : folders) {
    std::vector<fs::path> dirs = fs::exists(folder / "sweep.toml") ? sweep_points(folder) : std::vector<fs::path>{folder};
    for (const fs::path& dir : dirs) {
      if (!fs::exists(dir / "summary.json") || !fs::exists(dir / "config.resolved.toml"))
        throw std::runtime_error(fmt::format("compare: {} is not a run folder (no summary.json and config.resolved.toml)", dir.string()));
      Run run;
      run.dir = fs::absolute(dir);
      run.label = runs.size() < 26 ? std::string(1, static_cast<char>('A' + runs.size())) : fmt::format("R{}", runs.size() + 1);
      run.summary = read_json(dir / "summary.json");
      run.config = config_values(dir);
      run.metrics = summary_metrics(run.summary);
      runs.push_back(std::move(run));
    }
  }
  if (runs.size() < 2) throw std::runtime_error(fmt::format("compare needs at least two run folders; got {}", runs.size()));

  out << "# Runs\n\n";
  for (const Run& run : runs)
    out << fmt::format("- {}: {} ({}, {})\n", run.label, run.dir.string(), run.summary.value("experiment", "?"), run.summary.value("status", "?"));
  std::string header = "|", rule = "| --- |";
  for (const Run& run : runs) header += " " + run.label + " |", rule += " --- |";

  out << "\n## Config keys that differ\n\n";
  std::set<std::string> keys;
  for (const Run& run : runs)
    for (const auto& [key, _] : run.config) keys.insert(key);
  std::string rows;
  for (const std::string& key : keys) {
    std::set<std::string> values;
    for (const Run& run : runs) values.insert(run.config.count(key) ? run.config.at(key) : "(unset)");
    if (values.size() < 2) continue;
    rows += "| " + cell(key) + " |";
    for (const Run& run : runs) rows += " " + cell(run.config.count(key) ? run.config.at(key) : "(unset)") + " |";
    rows += "\n";
  }
  if (rows.empty()) out << "(none: every run has the same resolved config)\n";
  else out << "| key " << header << "\n" << rule << "\n" << rows;

  out << "\n## Summary metrics\n\n| metric " << header << "\n" << rule << "\n";
  std::set<std::string> metrics;
  for (const Run& run : runs)
    for (const auto& [metric, _] : run.metrics) metrics.insert(metric);
  for (const std::string& metric : metrics) {
    out << "| " << cell(metric) << " |";
    for (const Run& run : runs) out << " " << (run.metrics.count(metric) ? number_text(run.metrics.at(metric)) : "") << " |";
    out << "\n";
  }
  paired_tables(runs, out);
}

}  // namespace moelab
