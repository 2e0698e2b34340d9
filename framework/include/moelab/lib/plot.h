// Figures for reports, drawn by gnuplot as PNG. Each figure keeps its data (.dat) and script (.gp)
// beside the image so a user can restyle and redraw it. Every function returns {"file", "caption"},
// the entry an analyzer lists under "figures" for the report page. Without gnuplot installed, a
// warning is logged once and the entry says "rendered": false (data and script are still written).
#pragma once

#include <nlohmann/json.hpp>
#include <torch/types.h>

#include <filesystem>
#include <string>
#include <utility>
#include <vector>

namespace moelab {

struct PlotLabels {
  std::string title, xlabel, ylabel;
  std::string colorbar = "";  // heatmaps: what the colours measure, written beside the colour box
  // A label per column / row of a heatmap, per x of plot_lines (xticks; for example decoder layer
  // indices); empty: 0, 1, ...
  std::vector<std::string> xticks = {}, yticks = {};
};

// A matrix [rows, cols] as a colour map: column c at x = c, row r at y = r (row 0 at the bottom, so
// cell [r][c] with r < c lies below the diagonal). NaN cells are grey: no value.
nlohmann::json plot_heatmap(const std::filesystem::path& dir, const std::string& name, const torch::Tensor& matrix,
                            const PlotLabels& labels, const std::string& caption);
// Heatmaps side by side in one figure under `title`, each drawn as plot_heatmap draws it with its own
// colour scale and labelled colour box: for quantities that must not share one scale.
struct HeatmapPanel {
  torch::Tensor matrix;
  PlotLabels labels;
};
nlohmann::json plot_heatmaps(const std::filesystem::path& dir, const std::string& name, const std::string& title,
                             const std::vector<HeatmapPanel>& panels, const std::string& caption);
// One line per named series of y values over x = 0, 1, ...
nlohmann::json plot_lines(const std::filesystem::path& dir, const std::string& name,
                          const std::vector<std::pair<std::string, torch::Tensor>>& series, const PlotLabels& labels,
                          const std::string& caption, bool log_y = false);
// Clustered bars: one group per category, one bar per named series (values in category order).
nlohmann::json plot_bars(const std::filesystem::path& dir, const std::string& name, const std::vector<std::string>& categories,
                         const std::vector<std::pair<std::string, std::vector<double>>>& series, const PlotLabels& labels,
                         const std::string& caption);

// The report page: one section per entry of `sections` ([{"title", "numbers": {name: value}, "figures": [...]}]),
// figures shown with their captions. Written atomically.
void write_report_html(const std::filesystem::path& file, const std::string& title, const nlohmann::json& sections);

}  // namespace moelab
