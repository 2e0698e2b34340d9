// Sweeps: `runexp EXP.toml --sweep a.b=1,2 --sweep c.d=x,y` runs every point of the grid (the cartesian
// product) as its own runexp process and run folder, --jobs N at a time. The sweep's folder
// (<run_dir>/<name>/sweep-<time>/) keeps sweep.toml (the grid, each point's run folder and status),
// sweep.csv and sweep.md (one row per point with every numeric summary metric) and plots/ (each metric
// that varies against each swept key, the base model as a reference line where a stage reports one).
// A stage whose key (stage_keys.h) equals one that another point finished is reused, not computed:
// points compute a stage under a lock per stage key in the sweep folder, so with --jobs the first point
// to need a stage computes it and the others wait for it, then reuse it.
#pragma once

#include "plugin_registry.h"
#include "stage_cache.h"

#include <filesystem>
#include <string>
#include <vector>

namespace moelab {

struct SweepAxis {
  std::string key;                  // "roma.lambda"
  std::vector<std::string> values;  // each parsed as TOML like --set's, e.g. "0.01", "[1, 2]", "softmax"
};

// "key=v1,v2,...": commas inside [], {} or quotes do not split.
SweepAxis parse_sweep_axis(const std::string& argument);

struct SweepRequest {
  std::filesystem::path experiment;    // absolute
  std::vector<std::string> overrides;  // --set, for every point (before its swept values)
  std::vector<SweepAxis> axes;
  int jobs = 1;
  bool resume = false;                   // continue the newest sweep of the same grid
  bool dry_run = false;                  // check and list the points, run nothing
  std::vector<std::string> point_flags;  // passed on to each point's runexp (--plugin-path DIR, -v)
};

// Runs the sweep; returns runexp's exit status: 0 when every point completed, 130 when it was
// interrupted (SIGINT/SIGTERM reach each running point once; --resume continues), 1 otherwise.
int run_sweep(const SweepRequest& request, const PluginRegistry& registry);

// For a point's runexp (--sweep-dir): the other points' run folders as sources of finished stages, and
// the sweep's stage lock folder.
StageCache sweep_stage_cache(const std::filesystem::path& sweep_dir, const std::filesystem::path& own_run_dir);

}  // namespace moelab
