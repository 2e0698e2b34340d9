// runexp: runs an experiment file. See `runexp --help`.
#include "experiment_file.h"
#include "experiment_run.h"
#include "launch.h"
#include "compare.h"
#include "input_check.h"
#include "objective_check.h"
#include "moelab/lib/json_read.h"
#include "moelab/lib/log.h"
#include "plugin_registry.h"
#include "provenance.h"
#include "schema.h"
#include "suggest.h"
#include "sweep.h"

#include "moelab/tokenizer.h"

#include <fmt/format.h>
#include <fmt/ranges.h>
#include <nlohmann/json.hpp>

#include <torch/cuda.h>

#include <chrono>

#include <cstdio>
#include <iostream>

namespace {

constexpr const char* kUsage = R"(usage:
  runexp EXPERIMENT.toml [--set key.path=value]... [--resume] [--dry-run] [--plugin-path DIR]... [-v]
  runexp EXPERIMENT.toml --sweep key.path=v1,v2,... [--sweep ...]... [--jobs N] [--set ...]... [--resume]
  runexp compare RUN_DIR RUN_DIR...
  runexp --list-plugins [--plugin-path DIR]...
  runexp --describe PLUGIN [--plugin-path DIR]...
  runexp tokenize --tokenizer tokenizer.json [--benchmark] < texts.jsonl
  runexp --version

  A run writes its folder <run_dir>/<name>/<YYYYmmdd-HHMMSS>/. run_dir is the experiment file's top-level
  `run_dir` key (`[run] run_dir` in the docs): default "runs" in the working directory, a relative path
  set in the file is relative to the file, --set run_dir=PATH moves it; name is `name` (default: the file
  name). The folder keeps config.resolved.toml, log.txt, metrics.jsonl, summary.json, one folder per
  stage, tb/ (TensorBoard event files: tensorboard --logdir <run>/tb) and, from evaluation stages,
  results.json in lm-evaluation-harness's layout (with its per-sample JSONL).

  compare         prints (stdout, markdown) the config keys that differ between the runs, their summary
                  metrics, and for runs that evaluated the same questions the paired test (McNemar exact p,
                  bootstrap 95% interval of the accuracy difference); a sweep folder stands for its points

  tokenize        reads JSON lines ({"text": ...} or a JSON string) and prints {"ids": [...]} per line;
                  --benchmark instead encodes the lines joined by newlines, repeated 200 times, once, and
                  prints single-thread throughput (the same measurement as HF's in benchmarks/)

  --set k=v       override a key; the value is parsed as TOML (a bare word is a string)
  --sweep k=v,..  run every point of the grid of all --sweep keys (cartesian product; values parsed like
                  --set's; commas inside [] or quotes do not split), each point a normal run folder; the
                  sweep's folder <run_dir>/<name>/sweep-<time>/ has sweep.toml, sweep.csv, sweep.md and
                  plots/. Stages whose config and inputs are equal between points run once and are reused
  --jobs N        with --sweep: run N points at a time, as separate processes (with CUDA, the visible
                  GPUs are handed out round-robin through CUDA_VISIBLE_DEVICES); default 1
  --dry-run       validate, open every input (model config, tokenizer, data files), print the resolved
                  config (defaults included), run nothing
  --resume        continue the newest run with the same resolved config, skipping finished stages; with
                  --sweep, the newest sweep of the same grid (finished points skipped, others continued)
  --plugin-path   also search DIR for plugin libraries (also: $MOELAB_PLUGIN_PATH, plugin_path in the file)
  -v              debug output on the console
  --version       moelab's version and git commit
  --run-folder D  run in folder D (continued if it holds the same config); --sweep-dir S: reuse finished
                  stages of sweep S's points (both used by --sweep for its points)
)";

// Every option, for "did you mean" on a typo.
const std::vector<std::string> kOptions = {"--set", "--sweep", "--jobs", "--resume", "--dry-run", "--plugin-path", "--describe",
                                           "--list-plugins", "--verbose", "--help", "--version", "--run-folder", "--sweep-dir"};

struct Arguments {
  std::string file, describe;
  std::vector<std::string> overrides;
  std::vector<moelab::SweepAxis> sweeps;
  int jobs = 1;
  std::filesystem::path run_folder, sweep_dir;
  std::vector<std::filesystem::path> plugin_path;
  bool dry_run = false, resume = false, list = false, verbose = false;
};

void print_version() {
  const nlohmann::json v = moelab::versions();
  std::cout << fmt::format("moelab {} (git {}, commit {}{}), LibTorch {}\n", v.value("moelab", "?"), v.value("git_describe", "unknown"),
                           v.value("git_commit", "unknown"), v.value("git_dirty", false) ? ", with uncommitted changes" : "",
                           v.value("libtorch", "?"));
}

Arguments parse_args(int argc, char** argv) {
  Arguments o;
  auto value_of = [&](int& i, const std::string& flag) -> std::string {
    if (i + 1 >= argc) throw std::runtime_error(flag + " needs a value");
    return argv[++i];
  };
  // A misspelt command ("compair") is not an experiment file.
  if (argc > 1 && argv[1][0] != '-' && !std::filesystem::exists(argv[1]) && std::string(argv[1]).find('.') == std::string::npos)
    if (std::string hint = moelab::did_you_mean(argv[1], {"compare", "tokenize"}); !hint.empty())
      throw std::runtime_error(fmt::format("no experiment file or command '{}'{}", argv[1], hint));
  for (int i = 1; i < argc; ++i) {
    std::string a = argv[i];
    if (a == "--set") o.overrides.push_back(value_of(i, a));
    else if (a.rfind("--set=", 0) == 0) o.overrides.push_back(a.substr(6));
    else if (a == "--sweep") o.sweeps.push_back(moelab::parse_sweep_axis(value_of(i, a)));
    else if (a.rfind("--sweep=", 0) == 0) o.sweeps.push_back(moelab::parse_sweep_axis(a.substr(8)));
    else if (a == "--jobs" || a == "-j") {
      const std::string n = value_of(i, a);
      if (n.empty() || n.find_first_not_of("0123456789") != std::string::npos || std::stoi(n) < 1)
        throw std::runtime_error(fmt::format("{} {}: expected a whole number of processes, at least 1", a, n));
      o.jobs = std::stoi(n);
    } else if (a == "--run-folder") o.run_folder = std::filesystem::absolute(value_of(i, a));
    else if (a == "--sweep-dir") o.sweep_dir = std::filesystem::absolute(value_of(i, a));
    else if (a == "--version") {
      print_version();
      std::exit(0);
    } else if (a == "--plugin-path") o.plugin_path.emplace_back(std::filesystem::absolute(value_of(i, a)));
    else if (a == "--describe") o.describe = value_of(i, a);
    else if (a == "--dry-run") o.dry_run = true;
    else if (a == "--resume") o.resume = true;
    else if (a == "--list-plugins") o.list = true;
    else if (a == "-v" || a == "--verbose") o.verbose = true;
    else if (a == "-h" || a == "--help") {
      std::cout << kUsage;
      std::exit(0);
    } else if (!a.empty() && a[0] == '-') {
      throw std::runtime_error("unknown option " + a + moelab::did_you_mean(a.substr(0, a.find('=')), kOptions) + "; see runexp --help");
    }
    else if (o.file.empty()) o.file = a;
    else throw std::runtime_error("only one experiment file can be given; also got " + a);
  }
  if (o.file.empty() && !o.list && o.describe.empty()) throw std::runtime_error(std::string("no experiment file given\n") + kUsage);
  if (o.jobs > 1 && o.sweeps.empty()) throw std::runtime_error("--jobs runs the points of a --sweep in parallel; give --sweep too");
  if (!o.sweeps.empty() && !o.run_folder.empty()) throw std::runtime_error("--run-folder names one run; a --sweep makes one per point");
  return o;
}

void list_plugins(const moelab::PluginRegistry& registry) {
  for (const auto* p : registry.all())
    std::cout << fmt::format("{:<20} {:<10} {:<8} {}\n    {}\n", p->descriptor->name, moelab::kind_name(p->descriptor->kind),
                             p->descriptor->version, p->descriptor->description, p->file.string());
  if (registry.all().empty()) std::cout << "no plugins found\n";
}

void describe(const moelab::PluginRegistry& registry, const std::string& name) {
  const auto& d = *registry.get(name).descriptor;
  std::cout << fmt::format("{} ({} {}): {}\n", d.name, moelab::kind_name(d.kind), d.version, d.description);
  for (const auto& k : d.keys) {
    std::string allowed;
    if (!k.range.text().empty()) allowed = fmt::format(" ({})", k.range.text());
    if (k.type == moelab::KeyType::component) allowed = fmt::format(" (a {} table)", k.choices.at(0));
    else if (k.type == moelab::KeyType::component_list) allowed = fmt::format(" ({} tables)", k.choices.at(0));
    else if (!k.choices.empty()) allowed = fmt::format(" (one of: {})", fmt::join(k.choices, ", "));
    std::cout << fmt::format("  {:<22} {:<20} {:<16} {}{}\n", k.name, moelab::key_type_name(k.type),
                             k.default_toml.empty() ? "(required)" : k.default_toml, k.help, allowed);
  }
}

int tokenize(int argc, char** argv) {
  std::string file;
  bool benchmark = false;
  for (int i = 2; i < argc; ++i) {
    std::string a = argv[i];
    if (a == "--tokenizer" && i + 1 < argc) file = argv[++i];
    else if (a == "--benchmark") benchmark = true;
    else throw std::runtime_error("tokenize: unknown argument " + a + "\n" + kUsage);
  }
  if (file.empty()) throw std::runtime_error(std::string("tokenize needs --tokenizer FILE\n") + kUsage);
  auto tokenizer = moelab::Tokenizer::from_file(file);
  std::vector<std::string> texts;
  std::string line;
  for (long long number = 1; std::getline(std::cin, line); ++number) {
    const nlohmann::json j = moelab::parse_json(line, fmt::format("stdin:{}", number));
    if (j.is_object() && j.contains("text") && j["text"].is_string()) texts.push_back(j["text"]);
    else if (j.is_string()) texts.push_back(j);
    else throw std::runtime_error(fmt::format("stdin:{}: expected {{\"text\": \"...\"}} or a JSON string", number));
  }
  if (!benchmark) {
    for (const auto& text : texts) std::cout << nlohmann::json({{"ids", tokenizer->encode(text)}}).dump() << "\n";
    return 0;
  }
  std::string joined;
  for (std::size_t i = 0; i < texts.size(); ++i) joined += (i ? "\n" : "") + texts[i];
  std::string big;
  for (int r = 0; r < 200; ++r) big += joined;
  auto start = std::chrono::steady_clock::now();
  std::size_t tokens = tokenizer->encode(big).size();
  double seconds = std::chrono::duration<double>(std::chrono::steady_clock::now() - start).count();
  std::cout << nlohmann::json({{"bytes", big.size()}, {"tokens", tokens}, {"seconds", seconds}, {"MB_per_s", big.size() / seconds / 1e6}}).dump()
            << "\n";
  return 0;
}

// runexp compare RUN_DIR...: tables to stdout, log lines to stderr.
int compare(int argc, char** argv) {
  std::vector<std::filesystem::path> runs;
  for (int i = 2; i < argc; ++i) {
    std::string a = argv[i];
    if (a == "-h" || a == "--help") {
      std::cout << kUsage;
      return 0;
    }
    if (!a.empty() && a[0] == '-') throw std::runtime_error("compare: unknown option " + a + "; it takes run folders: runexp compare RUN_DIR RUN_DIR...");
    runs.emplace_back(a);
  }
  moelab::compare_runs(runs, std::cout);
  return 0;
}

}  // namespace

int main(int argc, char** argv) {
  moelab::set_command_line(argc, argv);  // recorded in each run's summary.json "provenance"
  try {
    if (argc > 1 && std::string(argv[1]) == "tokenize") return tokenize(argc, argv);
    if (argc > 1 && std::string(argv[1]) == "compare") return compare(argc, argv);
    Arguments o = parse_args(argc, argv);
    if (o.verbose) moelab::log::set_level(moelab::LogLevel::debug);
    moelab::PluginRegistry registry;
    auto folders = moelab::PluginRegistry::default_search_path();
    folders.insert(folders.end(), o.plugin_path.begin(), o.plugin_path.end());
    if (o.list || !o.describe.empty()) {
      registry.scan(folders);
      if (o.list) list_plugins(registry);
      if (!o.describe.empty()) describe(registry, o.describe);
      return 0;
    }
    std::filesystem::path file = std::filesystem::absolute(o.file);
    toml::table merged = moelab::load_experiment(file, o.overrides);
    const moelab::distributed::Settings distributed = moelab::take_distributed_table(merged, file);
    auto extra = moelab::experiment_plugin_path(merged);
    folders.insert(folders.end(), extra.begin(), extra.end());
    registry.scan(folders);
    moelab::ResolvedExperiment experiment = moelab::resolve_experiment(merged, file, registry);
    moelab::check_objective_needs(experiment, registry);
    moelab::check_inputs(experiment, registry, moelab::resolve_model_folder(experiment));
    if (!o.sweeps.empty()) {
      if (!o.verbose) moelab::log::set_level(experiment.run.log_level);
      moelab::SweepRequest request{file, o.overrides, o.sweeps, o.jobs, o.resume, o.dry_run, {}};
      for (const auto& folder : o.plugin_path) request.point_flags.insert(request.point_flags.end(), {"--plugin-path", folder.string()});
      if (o.verbose) request.point_flags.push_back("-v");
      return moelab::run_sweep(request, registry);
    }
    if (o.dry_run) {
      toml::table shown = experiment.table;
      shown.insert("distributed", moelab::distributed_table(distributed));
      std::cout << moelab::to_toml(shown);
      return 0;
    }
    if (!o.verbose) moelab::log::set_level(experiment.run.log_level);
    const moelab::ModelDevice device = experiment.model.device;
    moelab::DistributedSession session(distributed, device == moelab::ModelDevice::cuda ||
                                                        (device == moelab::ModelDevice::automatic && torch::cuda::is_available()),
                                       o.verbose);
    moelab::RunPlacement placement;
    placement.run_dir = o.run_folder;
    if (!o.sweep_dir.empty()) placement.reuse = moelab::sweep_stage_cache(o.sweep_dir, o.run_folder);
    moelab::ExperimentRun run(std::move(experiment), registry, o.resume, std::move(placement));
    run.run_stages();
    session.finish();
    return 0;
  } catch (const moelab::RunInterrupted&) {
    return 130;  // 128 + SIGINT, as a shell reports a program stopped by Ctrl-C; logged by the run
  } catch (const moelab::RunFailed&) {
    return 1;  // logged and recorded in the run folder by the run
  } catch (const std::exception& e) {
    moelab::log::error("{}", e.what());
    return 1;
  }
}
