// Dataset of raw text documents from a UTF-8 file: split into paragraphs (blank-line separated), into
// lines, or kept whole; a byte that is not UTF-8 is an error naming the line. For routing studies and
// for calibration and perplexity text.
#include "moelab/moelab.h"
#include "moelab/lib/utf8.h"

#include <fstream>
#include <sstream>

namespace {

enum class Split { paragraph, line, whole };

struct Settings {
  std::filesystem::path path;
  Split split;
  long long limit;
};

const moelab::Options<Settings>& options() {
  static const auto o =
      moelab::Options<Settings>("text", moelab::Kind::dataset, "0.1.0", "raw text documents from a UTF-8 file")
          .path("path", &Settings::path, moelab::required, "the text file")
          .choice("split", &Settings::split, Split::paragraph, {{"paragraph", Split::paragraph}, {"line", Split::line}, {"whole", Split::whole}},
                  "one document per blank-line paragraph, per line, or the whole file")
          .integer("limit", &Settings::limit, 0, "read at most this many documents (0: all)");
  return o;
}

class TextDataset final : public moelab::Dataset {
 public:
  TextDataset(const moelab::Config& config, moelab::RunContext&) {
    const Settings settings = options().read(config);
    const std::filesystem::path& path = settings.path;
    std::ifstream in(path, std::ios::binary);
    if (!in) throw std::runtime_error(fmt::format("[{}] path ({}): cannot open {}", config.id(), config.where("path"), path.string()));
    const Split split = settings.split;
    const long long limit = settings.limit;
    std::string line, current;
    long long line_number = 0, first_line = 1;
    auto flush = [&] {
      std::size_t end = current.find_last_not_of(" \t\r\n");
      if (end != std::string::npos) add(current.substr(0, end + 1), fmt::format("{}:{}", path.string(), first_line));
      current.clear();
    };
    while (std::getline(in, line) && (limit <= 0 || static_cast<long long>(examples_.size()) < limit)) {
      ++line_number;
      if (!line.empty() && line.back() == '\r') line.pop_back();
      if (std::size_t bad = moelab::first_invalid_utf8(line); bad != std::string::npos)
        throw std::runtime_error(fmt::format("[{}] {}:{}: not UTF-8 text: byte 0x{:02X} at column {} starts no UTF-8 character", config.id(),
                                             path.string(), line_number, static_cast<unsigned char>(line[bad]), bad + 1));
      const bool blank = line.find_first_not_of(" \t") == std::string::npos;
      if (split == Split::line) {
        current = line;
        first_line = line_number;
        flush();
      } else if (split == Split::paragraph && blank) {
        flush();
        first_line = line_number + 1;
      } else {
        if (current.empty()) first_line = line_number;
        current += current.empty() ? line : "\n" + line;
      }
    }
    if (limit <= 0 || static_cast<long long>(examples_.size()) < limit) flush();
    if (examples_.empty()) throw std::runtime_error(fmt::format("[{}] {}: no text", config.id(), path.string()));
  }

  std::size_t size() const override { return examples_.size(); }
  const moelab::Example& at(std::size_t index) const override { return examples_.at(index); }

 private:
  void add(std::string text, std::string origin) {
    moelab::Example ex;
    ex.id = std::to_string(examples_.size());
    ex.text = std::move(text);
    ex.origin = std::move(origin);
    examples_.push_back(std::move(ex));
  }

  std::vector<moelab::Example> examples_;
};

}  // namespace

MOELAB_PLUGIN(options, TextDataset)
