// runexp: runs an experiment file. See `runexp --help`.
#include "experiment_file.h"
#include "experiment_run.h"
#include "input_check.h"
#include "objective_check.h"
#include "moelab/lib/json_read.h"
#include "moelab/lib/log.h"
#include "plugin_registry.h"
#include "provenance.h"
#include "schema.h"

#include "moelab/tokenizer.h"

#include <fmt/format.h>
#include <fmt/ranges.h>
#include <nlohmann/json.hpp>

#include <chrono>

#include <cstdio>
#include <iostream>

namespace {

constexpr const char* kUsage = R"(usage:
  runexp EXPERIMENT.toml [--set key.path=value]... [--resume] [--dry-run] [--plugin-path DIR]... [-v]
  runexp --list-plugins [--plugin-path DIR]...
  runexp --describe PLUGIN [--plugin-path DIR]...
  runexp tokenize --tokenizer tokenizer.json [--benchmark] < texts.jsonl

  tokenize        reads JSON lines ({"text": ...} or a JSON string) and prints {"ids": [...]} per line;
                  --benchmark instead encodes the lines joined by newlines, repeated 200 times, once, and
                  prints single-thread throughput (the same measurement as HF's in benchmarks/)

  --set k=v       override a key; the value is parsed as TOML (a bare word is a string)
  --dry-run       validate, open every input (model config, tokenizer, data files), print the resolved
                  config (defaults included), run nothing
  --resume        continue the newest run with the same resolved config, skipping finished stages
  --plugin-path   also search DIR for plugin libraries (also: $MOELAB_PLUGIN_PATH, plugin_path in the file)
  -v              debug output on the console
)";

struct Arguments {
  std::string file, describe;
  std::vector<std::string> overrides;
  std::vector<std::filesystem::path> plugin_path;
  bool dry_run = false, resume = false, list = false, verbose = false;
};

Arguments parse_args(int argc, char** argv) {
  Arguments o;
  auto value_of = [&](int& i, const std::string& flag) -> std::string {
    if (i + 1 >= argc) throw std::runtime_error(flag + " needs a value");
    return argv[++i];
  };
  for (int i = 1; i < argc; ++i) {
    std::string a = argv[i];
    if (a == "--set") o.overrides.push_back(value_of(i, a));
    else if (a.rfind("--set=", 0) == 0) o.overrides.push_back(a.substr(6));
    else if (a == "--plugin-path") o.plugin_path.emplace_back(std::filesystem::absolute(value_of(i, a)));
    else if (a == "--describe") o.describe = value_of(i, a);
    else if (a == "--dry-run") o.dry_run = true;
    else if (a == "--resume") o.resume = true;
    else if (a == "--list-plugins") o.list = true;
    else if (a == "-v" || a == "--verbose") o.verbose = true;
    else if (a == "-h" || a == "--help") {
      std::cout << kUsage;
      std::exit(0);
    } else if (!a.empty() && a[0] == '-') throw std::runtime_error("unknown option " + a + "\n" + kUsage);
    else if (o.file.empty()) o.file = a;
    else throw std::runtime_error("only one experiment file can be given; also got " + a);
  }
  if (o.file.empty() && !o.list && o.describe.empty()) throw std::runtime_error(std::string("no experiment file given\n") + kUsage);
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

}  // namespace

int main(int argc, char** argv) {
  moelab::set_command_line(argc, argv);  // recorded in each run's summary.json "provenance"
  try {
    if (argc > 1 && std::string(argv[1]) == "tokenize") return tokenize(argc, argv);
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
    auto extra = moelab::experiment_plugin_path(merged);
    folders.insert(folders.end(), extra.begin(), extra.end());
    registry.scan(folders);
    moelab::ResolvedExperiment experiment = moelab::resolve_experiment(merged, file, registry);
    moelab::check_objective_needs(experiment, registry);
    moelab::check_inputs(experiment, registry, moelab::resolve_model_folder(experiment));
    if (o.dry_run) {
      std::cout << moelab::to_toml(experiment.table);
      return 0;
    }
    if (!o.verbose) moelab::log::set_level(experiment.run.log_level);
    moelab::ExperimentRun run(std::move(experiment), registry, o.resume);
    run.run_stages();
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
