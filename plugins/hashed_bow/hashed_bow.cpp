// A dependency-free text embedder: lower-cased word unigrams and bigrams hashed into `dim` buckets
// with a sign hash, sublinear term frequency, unit length. Good enough to find lexical task neighbours.
#include "moelab/moelab.h"

#include <cctype>
#include <cmath>

namespace {

std::uint64_t fnv1a(const std::string& s) {
  std::uint64_t h = 1469598103934665603ull;
  for (unsigned char c : s) h = (h ^ c) * 1099511628211ull;
  return h;
}

struct Settings {
  long long dim;
  bool bigrams;
};

const moelab::Options<Settings>& options() {
  static const auto o =
      moelab::Options<Settings>("hashed_bow", moelab::Kind::embedder, "0.1.0", "hashed word uni/bigram embedding (no model needed)")
          .integer("dim", &Settings::dim, 512, "embedding width").at_least(1)
          .flag("bigrams", &Settings::bigrams, true, "add word bigrams to unigrams");
  return o;
}

class HashedBagOfWords final : public moelab::Embedder {
 public:
  HashedBagOfWords(const moelab::Config& config, moelab::RunContext&) : settings_(options().read(config)) {}

  torch::Tensor embed(const std::vector<std::string>& texts) override {
    torch::Tensor out = torch::zeros({static_cast<long long>(texts.size()), settings_.dim});
    auto rows = out.accessor<float, 2>();
    for (std::size_t i = 0; i < texts.size(); ++i) {
      std::vector<std::string> words = split(texts[i]);
      std::vector<std::string> terms = words;
      if (settings_.bigrams)
        for (std::size_t w = 1; w < words.size(); ++w) terms.push_back(words[w - 1] + " " + words[w]);
      for (const auto& t : terms) {
        std::uint64_t h = fnv1a(t);
        rows[i][static_cast<long long>(h % settings_.dim)] += (h >> 63) ? 1.0f : -1.0f;
      }
    }
    out = out.sign() * out.abs().log1p();
    return out / out.norm(2, 1, true).clamp_min(1e-12);
  }

 private:
  static std::vector<std::string> split(const std::string& text) {
    std::vector<std::string> words;
    std::string word;
    for (unsigned char c : text) {
      if (std::isalnum(c) || c >= 0x80) word += static_cast<char>(std::tolower(c));
      else if (!word.empty()) words.push_back(std::move(word)), word.clear();
    }
    if (!word.empty()) words.push_back(word);
    return words;
  }

  Settings settings_;
};

}  // namespace

MOELAB_PLUGIN(options, HashedBagOfWords)
