// `runexp compare RUN_DIR...`: what differs between finished runs (config keys from config.resolved.toml),
// their summary metrics, and, where two runs evaluated the same questions (an evaluate stage's
// predictions.json), the paired test of their accuracies (moelab/lib/paired.h).
#pragma once

#include <nlohmann/json.hpp>

#include <filesystem>
#include <map>
#include <ostream>
#include <string>
#include <vector>

namespace moelab {

// The numeric leaves of summary.json's "stages", named "stage.path.to.value" (array items by index).
std::map<std::string, double> summary_metrics(const nlohmann::json& summary);

// Every key of a run's config.resolved.toml as "table.key" -> the value as TOML text (arrays whole).
std::map<std::string, std::string> config_values(const std::filesystem::path& run_dir);

// A number as the CSV and tables write it: the shortest text that reads back as the same double.
std::string number_text(double value);

// Writes the comparison tables (markdown) to `out`; a sweep folder (sweep.toml) stands for its points'
// run folders. Throws when fewer than two runs are given or a folder is not a run folder.
void compare_runs(const std::vector<std::filesystem::path>& runs, std::ostream& out);

}  // namespace moelab
