#include "moelab/lib/plot.h"

#include "moelab/lib/files.h"
#include "moelab/lib/log.h"

#include <fcntl.h>
#include <fmt/format.h>
#include <sys/wait.h>
#include <unistd.h>

#include <cerrno>
#include <cmath>
#include <cstdio>
#include <cstring>
#include <sstream>

namespace moelab {

namespace fs = std::filesystem;

namespace {

// A gnuplot single-quoted string: a quote is written twice.
std::string quoted(const std::string& text) {
  std::string out = "'";
  for (char c : text) out += c == '\'' ? std::string("''") : std::string(1, c);
  return out + "'";
}

std::string axis_labels(const PlotLabels& labels) {
  return fmt::format("set title {}\nset xlabel {}\nset ylabel {}\n", quoted(labels.title), quoted(labels.xlabel), quoted(labels.ylabel));
}

std::string header(const std::string& png, const std::string& size) {
  return fmt::format("set terminal pngcairo size {} font 'sans,10' noenhanced\nset output {}\n", size, quoted(png));
}

constexpr int kNoGnuplot = 127;

// Runs `gnuplot SCRIPT` in `dir` with its output in `log`, without a shell (a run folder whose path holds a
// quote or a space needs no quoting): the exit status, kNoGnuplot when it cannot be started. Between fork
// and exec the child only calls async-signal-safe functions, as a process with LibTorch's threads must.
int run_gnuplot(const fs::path& dir, const std::string& script, const std::string& log) {
  const std::string dir_text = dir.string();
  const char* argv[] = {"gnuplot", script.c_str(), nullptr};
  const pid_t child = ::fork();
  if (child < 0) throw std::runtime_error(fmt::format("cannot start gnuplot: {}", std::strerror(errno)));
  if (child == 0) {
    if (::chdir(dir_text.c_str()) != 0) ::_exit(126);
    const int out = ::open(log.c_str(), O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0644);
    if (out < 0 || ::dup2(out, 1) < 0 || ::dup2(out, 2) < 0) ::_exit(126);
    ::execvp("gnuplot", const_cast<char* const*>(argv));
    ::_exit(kNoGnuplot);
  }
  int status = 0;
  while (::waitpid(child, &status, 0) < 0)
    if (errno != EINTR) throw std::runtime_error(fmt::format("waiting for gnuplot: {}", std::strerror(errno)));
  return WIFEXITED(status) ? WEXITSTATUS(status) : 128 + WTERMSIG(status);
}

// Writes the data and script, runs gnuplot into a temporary image and renames it into place.
nlohmann::json draw(const fs::path& dir, const std::string& name, const std::string& data, const std::string& script_body,
                    const std::string& caption, const std::string& size = "960,640") {
  fs::create_directories(dir);
  const fs::path png = dir / (name + ".png"), partial = dir / (name + ".png.partial"), script = dir / (name + ".gp");
  write_file_atomic(dir / (name + ".dat"), data);
  write_file_atomic(script, header(partial.filename().string(), size) + script_body);
  const fs::path errors = dir / (name + ".gnuplot.log");
  const int status = run_gnuplot(dir, script.filename().string(), errors.filename().string());
  if (status != 0 || !fs::exists(partial)) {
    std::string log = fs::exists(errors) ? read_file(errors) : "";
    if (status == kNoGnuplot) {
      // Numbers matter more than pictures: without gnuplot the run goes on and keeps each figure's data and script.
      static bool warned = false;
      if (!warned) log::warn("gnuplot not found (Debian: gnuplot-nox): figures are left as .dat/.gp files; render them with `gnuplot NAME.gp`");
      warned = true;
      fs::remove(errors);
      return {{"file", png.filename().string()}, {"caption", caption}, {"rendered", false}};
    }
    throw std::runtime_error(fmt::format("gnuplot failed on {} (exit {}): {}", script.string(), status, log));
  }
  fs::remove(errors);
  fs::rename(partial, png);
  return {{"file", png.filename().string()}, {"caption", caption}};
}

std::string column_title(const std::string& name) {
  std::string out = "\"";
  for (char c : name) out += c == '"' ? '\'' : c;
  return out + "\"";
}

// The matrix as gnuplot's `matrix` data: one line per row, NaN written as gnuplot reads it.
std::string matrix_data(const std::string& name, const torch::Tensor& matrix) {
  torch::Tensor m = matrix.detach().to(torch::kCPU, torch::kFloat64).contiguous();
  if (m.dim() != 2 || m.numel() == 0) throw std::runtime_error(fmt::format("plot_heatmap {}: needs a non-empty matrix", name));
  std::ostringstream data;
  const double* v = m.data_ptr<double>();
  for (long long r = 0; r < m.size(0); ++r)
    for (long long c = 0; c < m.size(1); ++c) {
      const double x = v[r * m.size(1) + c];
      if (std::isnan(x)) data << "NaN";
      else data << x;
      data << (c + 1 < m.size(1) ? ' ' : '\n');
    }
  return data.str();
}

// One colour map from data block `index` of NAME.dat, with its labels and colour box; a grey
// background shows through NaN cells.
// gnuplot tics: `set xtics ("5" 0, "7" 1)` for labels, or back to numbers.
std::string tics(const char* axis, const std::vector<std::string>& labels) {
  if (labels.empty()) return fmt::format("set {}tics autofreq\n", axis);
  std::string out = fmt::format("set {}tics (", axis);
  for (std::size_t i = 0; i < labels.size(); ++i) out += fmt::format("{}{} {}", i ? ", " : "", quoted(labels[i]), i);
  return out + ")\n";
}

std::string heatmap_body(const std::string& name, long long index, const torch::Tensor& matrix, const PlotLabels& labels) {
  return axis_labels(labels) + tics("x", labels.xticks) + tics("y", labels.yticks) + fmt::format(
      "set cblabel {}\nset rmargin 12\nset palette defined (0 '#f7fbff', 0.5 '#6baed6', 1 '#08306b')\n"
      "set object 1 rectangle from graph 0,0 to graph 1,1 behind fillcolor rgb '#d9d9d9' fillstyle solid 1.0 noborder\n"
      "set xrange [-0.5:{}]\nset yrange [-0.5:{}]\nset tics out\nplot {} index {} matrix with image notitle\n",
      quoted(labels.colorbar), matrix.size(1) - 0.5, matrix.size(0) - 0.5, quoted(name + ".dat"), index);
}

}  // namespace

nlohmann::json plot_heatmap(const fs::path& dir, const std::string& name, const torch::Tensor& matrix, const PlotLabels& labels,
                            const std::string& caption) {
  std::string data = matrix_data(name, matrix);
  return draw(dir, name, data, heatmap_body(name, 0, matrix, labels), caption);
}

nlohmann::json plot_heatmaps(const fs::path& dir, const std::string& name, const std::string& title, const std::vector<HeatmapPanel>& panels,
                             const std::string& caption) {
  if (panels.empty()) throw std::runtime_error(fmt::format("plot_heatmaps {}: no panels", name));
  std::string data, body = fmt::format("set multiplot layout 1,{} title {}\n", panels.size(), quoted(title));
  for (std::size_t i = 0; i < panels.size(); ++i) {
    data += (i ? "\n\n" : "") + matrix_data(name, panels[i].matrix);  // blocks apart by two blank lines: `index i`
    body += heatmap_body(name, static_cast<long long>(i), panels[i].matrix, panels[i].labels);
  }
  return draw(dir, name, data, body + "unset multiplot\n", caption, fmt::format("{},600", 640 * panels.size()));
}

nlohmann::json plot_lines(const fs::path& dir, const std::string& name, const std::vector<std::pair<std::string, torch::Tensor>>& series,
                          const PlotLabels& labels, const std::string& caption, bool log_y) {
  if (series.empty()) throw std::runtime_error(fmt::format("plot_lines {}: no series", name));
  long long points = 0;
  std::vector<torch::Tensor> ys;
  for (const auto& [title, y] : series) {
    ys.push_back(y.detach().to(torch::kCPU, torch::kFloat64).reshape(-1));
    points = std::max<long long>(points, ys.back().numel());
  }
  std::ostringstream data;
  data << "x";
  for (const auto& s : series) data << ' ' << column_title(s.first);
  data << '\n';
  for (long long i = 0; i < points; ++i) {
    data << i;
    for (const auto& y : ys) {
      if (i < y.numel()) data << ' ' << y[i].item<double>();
      else data << " NaN";
    }
    data << '\n';
  }
  std::string body = axis_labels(labels) + (labels.xticks.empty() ? "" : tics("x", labels.xticks)) +
                     fmt::format("set key outside right\nset grid\n{}plot for [i=2:{}] {} using 1:i with linespoints pt 7 ps 0.5 title columnheader(i)\n",
                                 log_y ? "set logscale y\n" : "", series.size() + 1, quoted(name + ".dat"));
  return draw(dir, name, data.str(), body, caption);
}

nlohmann::json plot_bars(const fs::path& dir, const std::string& name, const std::vector<std::string>& categories,
                         const std::vector<std::pair<std::string, std::vector<double>>>& series, const PlotLabels& labels,
                         const std::string& caption) {
  if (series.empty() || categories.empty()) throw std::runtime_error(fmt::format("plot_bars {}: no data", name));
  std::ostringstream data;
  data << "category";
  for (const auto& s : series) data << ' ' << column_title(s.first);
  data << '\n';
  for (std::size_t c = 0; c < categories.size(); ++c) {
    data << column_title(categories[c]);
    for (const auto& s : series) data << ' ' << (c < s.second.size() ? s.second[c] : 0.0);
    data << '\n';
  }
  std::string body = axis_labels(labels) + fmt::format(
      "set style data histograms\nset style histogram clustered gap 1\nset style fill solid 0.8 border -1\nset key outside right\n"
      "set xtics rotate by -45\nset grid ytics\nset yrange [0:*]\nplot for [i=2:{}] {} using i:xtic(1) title columnheader(i)\n",
      series.size() + 1, quoted(name + ".dat"));
  return draw(dir, name, data.str(), body, caption);
}

namespace {
std::string html_escape(const std::string& text) {
  std::string out;
  for (char c : text) {
    switch (c) {
      case '&': out += "&amp;"; break;
      case '<': out += "&lt;"; break;
      case '>': out += "&gt;"; break;
      case '"': out += "&quot;"; break;
      default: out += c;
    }
  }
  return out;
}

std::string number_text(const nlohmann::json& v) {
  if (v.is_number_float()) return fmt::format("{:.4g}", v.get<double>());
  return v.is_string() ? v.get<std::string>() : v.dump();
}
}  // namespace

void write_report_html(const fs::path& file, const std::string& title, const nlohmann::json& sections) {
  std::ostringstream html;
  html << "<!DOCTYPE html>\n<html><head><meta charset=\"utf-8\"><title>" << html_escape(title) << "</title>\n"
       << "<style>body{font-family:sans-serif;max-width:1100px;margin:2em auto;color:#222}table{border-collapse:collapse;margin:1em 0}"
          "td,th{border:1px solid #ccc;padding:3px 8px;text-align:left}figure{margin:1.5em 0}img{max-width:100%;border:1px solid #eee}"
          "figcaption{color:#555;font-size:90%}</style></head><body>\n<h1>"
       << html_escape(title) << "</h1>\n";
  for (const auto& section : sections) {
    html << "<h2>" << html_escape(section.value("title", "")) << "</h2>\n";
    if (section.contains("text")) html << "<p>" << html_escape(section["text"].get<std::string>()) << "</p>\n";
    if (section.contains("numbers") && !section["numbers"].empty()) {
      html << "<table>\n";
      for (const auto& [key, value] : section["numbers"].items())
        html << "<tr><th>" << html_escape(key) << "</th><td>" << html_escape(number_text(value)) << "</td></tr>\n";
      html << "</table>\n";
    }
    for (const auto& figure : section.value("figures", nlohmann::json::array())) {
      if (!figure.value("rendered", true)) {
        html << "<p><em>Figure not rendered (no gnuplot): " << html_escape(figure["caption"].get<std::string>()) << "</em></p>\n";
        continue;
      }
      html << "<figure><img src=\"" << html_escape(figure["file"].get<std::string>()) << "\" alt=\""
           << html_escape(figure["caption"].get<std::string>()) << "\"><figcaption>" << html_escape(figure["caption"].get<std::string>())
           << "</figcaption></figure>\n";
    }
  }
  html << "</body></html>\n";
  write_file_atomic(file, html.str());
}

}  // namespace moelab
