#include "sweep.h"
#include "local_time.h"

#include "compare.h"
#include "experiment_file.h"
#include "log_sink.h"
#include "moelab/lib/files.h"
#include "moelab/lib/log.h"
#include "moelab/lib/plot.h"
#include "schema.h"

#include <boost/dll/runtime_symbol_info.hpp>
#include <fcntl.h>
#include <fmt/format.h>
#include <fmt/ranges.h>
#include <signal.h>
#include <spawn.h>
#include <sys/wait.h>
#include <toml++/toml.h>
#include <torch/cuda.h>
#include <unistd.h>

#include <atomic>
#include <chrono>
#include <cmath>
#include <cstring>
#include <ctime>
#include <iostream>
#include <set>
#include <sstream>
#include <thread>

extern char** environ;

namespace moelab {

namespace fs = std::filesystem;

namespace {


std::string trim(const std::string& s) {
  const auto first = s.find_first_not_of(" \t");
  if (first == std::string::npos) return "";
  return s.substr(first, s.find_last_not_of(" \t") - first + 1);
}

struct Point {
  int index = 0;                    // 1-based, in grid order (the last axis changes fastest)
  std::vector<std::string> values;  // one per axis
  fs::path run_dir;
  std::string status = "pending";  // pending, running, complete, failed, interrupted
};

std::string point_label(const std::vector<SweepAxis>& axes, const std::vector<std::string>& values) {
  std::vector<std::string> parts;
  for (std::size_t a = 0; a < axes.size(); ++a) parts.push_back(axes[a].key + "=" + values[a]);
  return fmt::format("{}", fmt::join(parts, ", "));
}

std::vector<Point> grid(const std::vector<SweepAxis>& axes) {
  std::vector<Point> points(1);
  for (const SweepAxis& axis : axes) {
    std::vector<Point> next;
    for (const Point& p : points)
      for (const std::string& v : axis.values) {
        Point q = p;
        q.values.push_back(v);
        next.push_back(q);
      }
    points = std::move(next);
  }
  for (std::size_t i = 0; i < points.size(); ++i) points[i].index = static_cast<int>(i) + 1;
  return points;
}

// What identifies a sweep for --resume: the experiment file, the --set overrides and the grid.
toml::table grid_table(const SweepRequest& request) {
  toml::table t;
  t.insert("experiment", request.experiment.string());
  toml::array overrides;
  for (const auto& o : request.overrides) overrides.push_back(o);
  t.insert("overrides", overrides);
  toml::array axes;
  for (const SweepAxis& axis : request.axes) {
    toml::array values;
    for (const auto& v : axis.values) values.push_back(v);
    axes.push_back(toml::table{{"key", axis.key}, {"values", values}});
  }
  t.insert("axis", axes);
  return t;
}

std::string toml_text(const toml::table& t) {
  std::ostringstream out;
  out << t;
  return out.str();
}

void write_sweep_toml(const fs::path& sweep_dir, const SweepRequest& request, const std::vector<Point>& points, const std::string& started,
                      const std::string& status) {
  toml::table t = grid_table(request);
  t.insert("started", started);
  t.insert("status", status);
  t.insert("jobs", request.jobs);
  toml::array rows;
  for (const Point& p : points) {
    toml::array values;
    for (const auto& v : p.values) values.push_back(v);
    rows.push_back(toml::table{{"index", p.index}, {"values", values}, {"run_dir", p.run_dir.string()}, {"status", p.status}});
  }
  t.insert("point", rows);
  write_file_atomic(sweep_dir / "sweep.toml", "# written by runexp --sweep; `runexp EXP.toml --sweep ... --resume` continues it\n" + toml_text(t));
}

toml::table read_toml(const fs::path& file) {
  try {
    return toml::parse_file(file.string());
  } catch (const toml::parse_error& e) {
    throw std::runtime_error(fmt::format("{}:{}: invalid TOML: {}", file.string(), e.source().begin.line, e.description()));
  }
}

// The newest sweep folder of this experiment with the same grid, or "".
fs::path matching_sweep(const fs::path& experiment_dir, const SweepRequest& request) {
  if (!fs::is_directory(experiment_dir)) return {};
  const std::string wanted = toml_text(grid_table(request));
  fs::path best;
  for (const auto& entry : fs::directory_iterator(experiment_dir)) {
    const fs::path file = entry.path() / "sweep.toml";
    if (entry.path().filename().string().rfind("sweep-", 0) != 0 || !fs::exists(file)) continue;
    toml::table t = read_toml(file);
    toml::table identity;
    for (const char* key : {"experiment", "overrides", "axis"})
      if (const toml::node* n = t.get(key)) identity.insert(key, *n);
    if (toml_text(identity) == wanted && entry.path() > best) best = entry.path();
  }
  return best;
}

// A folder claimed with one mkdir: two sweeps started in the same second never share one.
fs::path claim_folder(const fs::path& base) {
  fs::path dir = base;
  for (int n = 2; !fs::create_directory(dir); ++n) dir = base.string() + "-" + std::to_string(n);
  return dir;
}

std::string run_status(const fs::path& run_dir) {
  try {
    if (fs::exists(run_dir / "summary.json")) return read_json(run_dir / "summary.json").value("status", "running");
  } catch (const std::exception&) {
  }
  return "";
}

std::atomic<int> signals_received{0};
void on_signal(int) { signals_received.fetch_add(1); }

// SIGINT/SIGTERM are counted; the wait loop passes each on to the running points.
void install_signal_handlers() {
  struct sigaction action {};
  action.sa_handler = on_signal;
  sigemptyset(&action.sa_mask);
  sigaction(SIGINT, &action, nullptr);
  sigaction(SIGTERM, &action, nullptr);
}

// GPUs to hand out round-robin (CUDA_VISIBLE_DEVICES of each point); none without CUDA.
std::vector<std::string> visible_gpus() {
  std::vector<std::string> gpus;
  if (!torch::cuda::is_available()) return gpus;
  if (const char* env = std::getenv("CUDA_VISIBLE_DEVICES")) {
    std::stringstream list(env);
    for (std::string id; std::getline(list, id, ',');)
      if (!trim(id).empty()) gpus.push_back(trim(id));
  } else {
    for (std::size_t i = 0; i < torch::cuda::device_count(); ++i) gpus.push_back(std::to_string(i));
  }
  return gpus;
}

// Starts `args` (args[0] is the program) in its own process group, so that a Ctrl-C reaches the sweep
// alone and it forwards one signal to each point. Output goes to `log_file` unless it is empty.
pid_t spawn(const std::vector<std::string>& args, const fs::path& log_file, const std::string& cuda_devices) {
  std::vector<char*> argv;
  for (const auto& a : args) argv.push_back(const_cast<char*>(a.c_str()));
  argv.push_back(nullptr);
  std::vector<std::string> env_text;
  for (char** e = environ; *e; ++e)
    if (cuda_devices.empty() || std::strncmp(*e, "CUDA_VISIBLE_DEVICES=", 21) != 0) env_text.emplace_back(*e);
  if (!cuda_devices.empty()) env_text.push_back("CUDA_VISIBLE_DEVICES=" + cuda_devices);
  std::vector<char*> envp;
  for (auto& e : env_text) envp.push_back(e.data());
  envp.push_back(nullptr);

  posix_spawn_file_actions_t actions;
  posix_spawn_file_actions_init(&actions);
  if (!log_file.empty()) {
    posix_spawn_file_actions_addopen(&actions, 1, log_file.c_str(), O_WRONLY | O_CREAT | O_APPEND, 0644);
    posix_spawn_file_actions_adddup2(&actions, 1, 2);
  }
  posix_spawnattr_t attributes;
  posix_spawnattr_init(&attributes);
  posix_spawnattr_setflags(&attributes, POSIX_SPAWN_SETPGROUP);
  posix_spawnattr_setpgroup(&attributes, 0);
  pid_t pid = 0;
  const int error = posix_spawn(&pid, argv[0], &actions, &attributes, argv.data(), envp.data());
  posix_spawn_file_actions_destroy(&actions);
  posix_spawnattr_destroy(&attributes);
  if (error != 0) throw std::runtime_error(fmt::format("cannot start {}: {}", args[0], std::strerror(error)));
  return pid;
}

std::string csv_cell(const std::string& text) {
  if (text.find_first_of(",\"\n") == std::string::npos) return text;
  std::string out = "\"";
  for (char c : text) out += c == '"' ? std::string("\"\"") : std::string(1, c);
  return out + "\"";
}

std::string file_name(const std::string& text) {
  std::string out;
  for (char c : text) out += std::isalnum(static_cast<unsigned char>(c)) || c == '.' || c == '-' || c == '_' ? c : '_';
  return out;
}

// The metric with one path component replaced by "base" (evaluate's "finetuned" -> "base"), when it exists.
std::string base_metric_of(const std::string& metric, const std::set<std::string>& all) {
  std::vector<std::string> parts;
  std::stringstream in(metric);
  for (std::string part; std::getline(in, part, '.');) parts.push_back(part);
  for (std::size_t i = 1; i < parts.size(); ++i) {
    if (parts[i] == "base") continue;
    std::vector<std::string> swapped = parts;
    swapped[i] = "base";
    const std::string candidate = fmt::format("{}", fmt::join(swapped, "."));
    if (all.count(candidate)) return candidate;
  }
  return "";
}

// sweep.csv, sweep.md and plots/ from the points' summary.json files.
void write_results(const fs::path& sweep_dir, const std::string& name, const std::vector<SweepAxis>& axes, const std::vector<Point>& points) {
  std::vector<std::map<std::string, double>> metrics;
  std::set<std::string> names;
  for (const Point& p : points) {
    metrics.push_back(fs::exists(p.run_dir / "summary.json") ? summary_metrics(read_json(p.run_dir / "summary.json"))
                                                             : std::map<std::string, double>{});
    for (const auto& [metric, _] : metrics.back()) names.insert(metric);
  }
  // Metrics with more than one value over the points: the table's columns and the plots.
  std::vector<std::string> varying, constant;
  for (const std::string& metric : names) {
    std::set<double> values;
    for (const auto& m : metrics)
      if (m.count(metric)) values.insert(m.at(metric));
    (values.size() > 1 ? varying : constant).push_back(metric);
  }
  auto value_text = [&](std::size_t point, const std::string& metric) {
    return metrics[point].count(metric) ? number_text(metrics[point].at(metric)) : std::string();
  };

  std::string csv = "point";
  for (const SweepAxis& axis : axes) csv += "," + csv_cell(axis.key);
  csv += ",status,run_dir";
  for (const std::string& metric : names) csv += "," + csv_cell(metric);
  csv += "\n";
  for (std::size_t i = 0; i < points.size(); ++i) {
    csv += std::to_string(points[i].index);
    for (const std::string& v : points[i].values) csv += "," + csv_cell(v);
    csv += "," + points[i].status + "," + csv_cell(points[i].run_dir.string());
    for (const std::string& metric : names) csv += "," + value_text(i, metric);
    csv += "\n";
  }
  write_file_atomic(sweep_dir / "sweep.csv", csv);

  std::vector<std::string> keys;
  for (const SweepAxis& axis : axes) keys.push_back(axis.key);
  std::string md = fmt::format("# Sweep of {} over {}\n\n{} points; every numeric summary metric of each point is in sweep.csv, with its run "
                               "folder.\n\n| point | {} | status |",
                               name, fmt::join(keys, ", "), points.size(), fmt::join(keys, " | "));
  for (const std::string& metric : varying) md += " " + metric + " |";
  md += "\n| ---";
  for (std::size_t c = 0; c < axes.size() + 1 + varying.size(); ++c) md += " | ---";
  md += " |\n";
  for (std::size_t i = 0; i < points.size(); ++i) {
    md += fmt::format("| {} | {} | {} |", points[i].index, fmt::join(points[i].values, " | "), points[i].status);
    for (const std::string& metric : varying) md += " " + value_text(i, metric) + " |";
    md += "\n";
  }
  if (!constant.empty()) {
    md += "\nThe same in every point that reports it:\n\n";
    for (const std::string& metric : constant)
      for (std::size_t i = 0; i < points.size(); ++i)
        if (metrics[i].count(metric)) {
          md += fmt::format("- {} = {}\n", metric, value_text(i, metric));
          break;
        }
  }

  // One plot per varying metric and swept key (x: the key's values in order), one line per value of the other keys.
  std::string figures;
  for (std::size_t a = 0; a < axes.size(); ++a) {
    if (axes[a].values.size() < 2) continue;
    for (const std::string& metric : varying) {
      std::vector<std::pair<std::string, std::vector<double>>> lines;
      for (std::size_t i = 0; i < points.size(); ++i) {
        if (!metrics[i].count(metric)) continue;
        std::vector<std::string> others;
        for (std::size_t b = 0; b < axes.size(); ++b)
          if (b != a) others.push_back(axes[b].key + "=" + points[i].values[b]);
        const std::string line = others.empty() ? metric : fmt::format("{}", fmt::join(others, ", "));
        auto it = std::find_if(lines.begin(), lines.end(), [&](const auto& l) { return l.first == line; });
        if (it == lines.end()) it = lines.insert(lines.end(), {line, std::vector<double>(axes[a].values.size(), NAN)});
        const auto at = std::find(axes[a].values.begin(), axes[a].values.end(), points[i].values[a]) - axes[a].values.begin();
        it->second[static_cast<std::size_t>(at)] = metrics[i].at(metric);
      }
      if (lines.empty()) continue;
      std::string caption = fmt::format("{} against {}", metric, axes[a].key);
      const std::string base = base_metric_of(metric, names);
      if (!base.empty()) {
        std::set<double> values;
        for (const auto& m : metrics)
          if (m.count(base)) values.insert(m.at(base));
        if (values.size() == 1) {
          lines.emplace_back("base model (" + base + ")", std::vector<double>(axes[a].values.size(), *values.begin()));
          caption += fmt::format("; flat line: the base model ({} = {})", base, number_text(*values.begin()));
        }
      }
      std::vector<std::pair<std::string, torch::Tensor>> series;
      for (const auto& [title, ys] : lines) series.emplace_back(title, torch::tensor(ys, torch::kFloat64));
      const std::string file = file_name(metric + "-vs-" + axes[a].key);
      PlotLabels labels{metric, axes[a].key, metric};
      labels.xticks = axes[a].values;  // the swept values, evenly spaced in the order given
      nlohmann::json figure = plot_lines(sweep_dir / "plots", file, series, labels, caption);
      figures += fmt::format("- [{}](plots/{}): {}\n", file, figure["file"].get<std::string>(), caption);
    }
  }
  if (!figures.empty()) md += "\n## Plots\n\n" + figures;
  write_file_atomic(sweep_dir / "sweep.md", md);
}

// Which stages each point computed and which it reused from another point, from the points' summaries.
void log_reuse(const std::vector<Point>& points) {
  std::map<std::string, std::pair<std::vector<int>, std::vector<int>>> stages;  // stage -> (computed by, reused by)
  for (const Point& p : points) {
    if (!fs::exists(p.run_dir / "summary.json")) continue;
    const nlohmann::json summary = read_json(p.run_dir / "summary.json");
    const nlohmann::json stage_summaries = summary.value("stages", nlohmann::json::object());
    for (const auto& [stage, s] : stage_summaries.items()) {
      if (s.contains("error")) continue;
      (s.contains("reused_from") ? stages[stage].second : stages[stage].first).push_back(p.index);
    }
  }
  for (const auto& [stage, by] : stages)
    log::info("sweep: stage [{}] computed in point(s) {}{}", stage, by.first.empty() ? "none" : fmt::format("{}", fmt::join(by.first, ", ")),
              by.second.empty() ? "" : fmt::format("; reused (same config and inputs) in point(s) {}", fmt::join(by.second, ", ")));
}

}  // namespace

SweepAxis parse_sweep_axis(const std::string& argument) {
  const auto eq = argument.find('=');
  if (eq == std::string::npos || eq == 0 || trim(argument.substr(0, eq)).empty())
    throw std::runtime_error(fmt::format("--sweep {}: expected key.path=value1,value2,...", argument));
  SweepAxis axis{trim(argument.substr(0, eq)), {}};
  std::string current;
  int depth = 0;
  char quote = 0;
  bool escaped = false;
  for (char c : argument.substr(eq + 1)) {
    if (quote) {
      if (escaped) escaped = false;
      else if (c == '\\' && quote == '"') escaped = true;
      else if (c == quote) quote = 0;
    } else if (c == '"' || c == '\'') {
      quote = c;
    } else if (c == '[' || c == '{') {
      ++depth;
    } else if (c == ']' || c == '}') {
      --depth;
    } else if (c == ',' && depth == 0) {
      axis.values.push_back(trim(current));
      current.clear();
      continue;
    }
    current += c;
  }
  axis.values.push_back(trim(current));
  if (quote || depth != 0) throw std::runtime_error(fmt::format("--sweep {}: an unclosed quote or bracket", argument));
  std::set<std::string> seen;
  for (const std::string& v : axis.values) {
    if (v.empty()) throw std::runtime_error(fmt::format("--sweep {}: an empty value (a comma too many?)", argument));
    if (!seen.insert(v).second) throw std::runtime_error(fmt::format("--sweep {}: the value {} is given twice", argument, v));
  }
  return axis;
}

StageCache sweep_stage_cache(const fs::path& sweep_dir, const fs::path& own_run_dir) {
  StageCache cache;
  const toml::table sweep = read_toml(sweep_dir / "sweep.toml");
  std::vector<SweepAxis> axes;
  if (const toml::array* list = sweep["axis"].as_array())
    for (const auto& a : *list) axes.push_back({a.as_table()->get_as<std::string>("key")->get(), {}});
  if (const toml::array* list = sweep["point"].as_array())
    for (const auto& node : *list) {
      const toml::table& p = *node.as_table();
      const fs::path dir = p["run_dir"].value_or(std::string());
      if (dir.empty() || dir == own_run_dir) continue;
      std::vector<std::string> values;
      if (const toml::array* v = p["values"].as_array())
        for (const auto& item : *v) values.push_back(item.value_or(std::string()));
      cache.add_run(dir, fmt::format("point {} ({})", p["index"].value_or(0LL), values.size() == axes.size() ? point_label(axes, values) : ""));
    }
  cache.set_lock_dir(sweep_dir / "locks");
  return cache;
}

int run_sweep(const SweepRequest& request, const PluginRegistry& registry) {
  std::set<std::string> keys;
  for (const SweepAxis& axis : request.axes) {
    if (!keys.insert(axis.key).second) throw std::runtime_error(fmt::format("--sweep {} is given twice; give all its values in one --sweep", axis.key));
    if (axis.key == "name" || axis.key == "run_dir")
      throw std::runtime_error(fmt::format("--sweep {}: the points of a sweep share one experiment name and run_dir; set it with --set", axis.key));
  }
  std::vector<Point> points = grid(request.axes);
  // Every point is checked before any runs: a bad value fails now, not hours into the sweep.
  fs::path experiment_dir;
  std::string name;
  for (Point& p : points) {
    std::vector<std::string> overrides = request.overrides;
    for (std::size_t a = 0; a < request.axes.size(); ++a) overrides.push_back(request.axes[a].key + "=" + p.values[a]);
    toml::table merged = load_experiment(request.experiment, overrides);
    merged.erase("distributed");  // how many processes run a point (torchrun) is each point's runexp's business (launch.h)
    ResolvedExperiment e = resolve_experiment(merged, request.experiment, registry);
    if (experiment_dir.empty()) experiment_dir = e.run.run_dir / e.run.name, name = e.run.name;
  }
  if (request.dry_run) {
    for (const Point& p : points) std::cout << fmt::format("point {}/{}: {}\n", p.index, points.size(), point_label(request.axes, p.values));
    return 0;
  }

  fs::path sweep_dir = request.resume ? matching_sweep(experiment_dir, request) : fs::path();
  std::string started = local_time_text("%Y-%m-%dT%H:%M:%S");
  if (!sweep_dir.empty()) {
    const toml::table earlier = read_toml(sweep_dir / "sweep.toml");
    started = earlier["started"].value_or(started);
    const toml::array* rows = earlier["point"].as_array();
    for (std::size_t i = 0; rows && i < rows->size() && i < points.size(); ++i) points[i].run_dir = (*rows)[i].as_table()->get("run_dir")->value_or(std::string());
  } else {
    if (request.resume) log::info("--resume: no earlier sweep of '{}' over this grid; starting a new sweep", name);
    fs::create_directories(experiment_dir);
    const std::string stamp = local_time_text("%Y%m%d-%H%M%S");
    sweep_dir = claim_folder(experiment_dir / ("sweep-" + stamp));
    const std::string suffix = sweep_dir.filename().string().substr(6);  // the stamp, "-2" when it was taken
    for (Point& p : points) p.run_dir = claim_folder(experiment_dir / fmt::format("{}-p{}", suffix, p.index));
  }
  log::set_file(sweep_dir / "log.txt");
  std::vector<std::string> swept;
  for (const SweepAxis& axis : request.axes) swept.push_back(axis.key);
  log::info("sweep of '{}': {} points over {} in {} ({} at a time)", name, points.size(), fmt::join(swept, ", "), sweep_dir.string(), request.jobs);
  for (Point& p : points)
    if (run_status(p.run_dir) == "complete") {
      p.status = "complete";
      log::info("point {}/{} ({}): complete before, skipped: {}", p.index, points.size(), point_label(request.axes, p.values), p.run_dir.string());
    }
  write_sweep_toml(sweep_dir, request, points, started, "running");

  install_signal_handlers();
  const std::vector<std::string> gpus = request.jobs > 1 ? visible_gpus() : std::vector<std::string>();
  struct Running {
    Point* point;
    std::size_t slot;
    std::chrono::steady_clock::time_point started;
  };
  std::map<pid_t, Running> running;
  std::vector<bool> slot_busy(static_cast<std::size_t>(request.jobs), false);
  std::size_t next = 0;
  int forwarded = 0;
  const std::string program = boost::dll::program_location().string();
  while (true) {
    const bool stopping = signals_received.load() > 0;
    while (!stopping && running.size() < static_cast<std::size_t>(request.jobs) && next < points.size()) {
      Point& p = points[next++];
      if (p.status == "complete") continue;
      std::vector<std::string> args = {program, request.experiment.string()};
      for (const auto& o : request.overrides) args.insert(args.end(), {"--set", o});
      for (std::size_t a = 0; a < request.axes.size(); ++a) args.insert(args.end(), {"--set", request.axes[a].key + "=" + p.values[a]});
      args.insert(args.end(), {"--run-folder", p.run_dir.string(), "--sweep-dir", sweep_dir.string()});
      args.insert(args.end(), request.point_flags.begin(), request.point_flags.end());
      const std::size_t slot = static_cast<std::size_t>(std::find(slot_busy.begin(), slot_busy.end(), false) - slot_busy.begin());
      slot_busy[slot] = true;
      const std::string gpu = gpus.empty() ? "" : gpus[slot % gpus.size()];
      const fs::path output = request.jobs > 1 ? sweep_dir / fmt::format("point-{}.log", p.index) : fs::path();
      const pid_t pid = spawn(args, output, gpu);
      running[pid] = {&p, slot, std::chrono::steady_clock::now()};
      p.status = "running";
      log::info("point {}/{} ({}): started{}{}: {}", p.index, points.size(), point_label(request.axes, p.values),
                gpu.empty() ? "" : " on GPU " + gpu, output.empty() ? "" : ", output in " + output.string(), p.run_dir.string());
      write_sweep_toml(sweep_dir, request, points, started, "running");
    }
    if (running.empty()) break;
    for (int received = signals_received.load(); forwarded < received; ++forwarded) {
      log::warn("sweep: interrupt received; passing it to the {} running point(s) and starting no more (`--resume` continues)", running.size());
      for (const auto& [child, _] : running) ::kill(-child, SIGINT);
    }
    // Polled, so that a signal that lands between the check above and a blocking wait is still passed on.
    int wait_status = 0;
    const pid_t pid = ::waitpid(-1, &wait_status, WNOHANG);
    if (pid == 0 || (pid < 0 && errno == EINTR)) {
      std::this_thread::sleep_for(std::chrono::milliseconds(100));
      continue;
    }
    if (pid < 0) throw std::runtime_error(fmt::format("waiting for the sweep's points: {}", std::strerror(errno)));
    auto it = running.find(pid);
    if (it == running.end()) continue;
    Point& p = *it->second.point;
    slot_busy[it->second.slot] = false;
    const double seconds = std::chrono::duration<double>(std::chrono::steady_clock::now() - it->second.started).count();
    running.erase(it);
    const std::string status = run_status(p.run_dir);
    const bool exited = WIFEXITED(wait_status);
    if (status == "complete" && exited && WEXITSTATUS(wait_status) == 0) p.status = "complete";
    else if (status == "failed" || (exited && WEXITSTATUS(wait_status) == 1)) p.status = "failed";
    else p.status = "interrupted";
    const std::string where = request.jobs > 1 ? (sweep_dir / fmt::format("point-{}.log", p.index)).string() : (p.run_dir / "log.txt").string();
    if (p.status == "complete") log::info("point {}/{} ({}): complete in {:.1f}s", p.index, points.size(), point_label(request.axes, p.values), seconds);
    else log::warn("point {}/{} ({}): {} after {:.1f}s; see {}", p.index, points.size(), point_label(request.axes, p.values), p.status, seconds, where);
    write_sweep_toml(sweep_dir, request, points, started, "running");
  }

  std::size_t complete = 0, failed = 0;
  for (const Point& p : points) complete += p.status == "complete", failed += p.status == "failed";
  const bool interrupted = signals_received.load() > 0 && complete + failed < points.size();
  const std::string status = complete == points.size() ? "complete" : interrupted ? "interrupted" : "failed";
  write_sweep_toml(sweep_dir, request, points, started, status);
  log_reuse(points);
  write_results(sweep_dir, name, request.axes, points);
  log::info("sweep {}: {} of {} points complete{}; results: {}", status, complete, points.size(),
            interrupted ? " (`runexp ... --resume` with the same --sweep continues)" : "", (sweep_dir / "sweep.md").string());
  log::set_file({});
  return status == "complete" ? 0 : interrupted ? 130 : 1;
}

}  // namespace moelab
