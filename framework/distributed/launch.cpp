#include "launch.h"

#include "moelab/config.h"
#include "moelab/lib/log.h"
#include "moelab/options.h"
#include "schema.h"

#include <fmt/format.h>

namespace moelab {

distributed::Settings take_distributed_table(toml::table& merged, const std::filesystem::path& file) {
  const toml::node* node = merged.get("distributed");
  if (!node) return distributed::Settings{};
  if (!node->is_table())
    throw std::runtime_error(fmt::format("{}: 'distributed' must be a table ([distributed] backend = \"auto\", timeout_s = 600)", file.string()));
  const auto& options = distributed::settings_options();
  const auto checked = check_table("distributed", *node->as_table(), {options.keys(), "[distributed]"}, file.string());
  distributed::Settings settings = options.read(Config(checked));
  merged.erase("distributed");
  return settings;
}

toml::table distributed_table(const distributed::Settings& settings) {
  const char* backend = settings.backend == distributed::Backend::gloo ? "gloo" : settings.backend == distributed::Backend::nccl ? "nccl" : "auto";
  return toml::table{{"backend", backend}, {"timeout_s", settings.timeout_s}};
}

DistributedSession::DistributedSession(const distributed::Settings& settings, bool cuda, bool verbose) {
  distributed::init(settings, cuda);
  // Every rank logs its warnings and errors; the progress and info lines are rank 0's.
  if (distributed::active() && !distributed::is_main() && !verbose) log::set_level(LogLevel::warn);
}

void DistributedSession::finish() { distributed::barrier("at the end of the run"); }

DistributedSession::~DistributedSession() { distributed::shutdown(); }

}  // namespace moelab
