// runexp under torchrun: the experiment file's [distributed] table and the process group's lifetime.
#pragma once

#include "moelab/lib/distributed.h"

#include <toml++/toml.h>

#include <filesystem>

namespace moelab {

// Checks [distributed] (keys, types, choices; errors name file:line) and takes it out of `merged`, which
// then holds plugin tables only. It is not part of config.resolved.toml: how many processes run a
// stage does not change its results (README, Several GPUs), so --resume works across world sizes.
distributed::Settings take_distributed_table(toml::table& merged, const std::filesystem::path& file);
// The resolved [distributed] table (defaults included), for --dry-run.
toml::table distributed_table(const distributed::Settings& settings);

// The process group while it lives: made when the launcher's variables are set, else nothing. The
// destructor waits for the other ranks only after a complete run (finish()); after an error each rank
// leaves on its own (the others stop with the collective's error or timeout).
class DistributedSession {
 public:
  DistributedSession(const distributed::Settings& settings, bool cuda, bool verbose);
  ~DistributedSession();
  DistributedSession(const DistributedSession&) = delete;
  DistributedSession& operator=(const DistributedSession&) = delete;
  void finish();
};

}  // namespace moelab
