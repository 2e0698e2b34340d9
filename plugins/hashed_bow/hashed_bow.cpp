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

class HashedBagOfWords final : public moelab::Embedder {
 public:
  HashedBagOfWords(const moelab::Config& config, moelab::RunContext&) : dim_(config.get_int("dim")), bigrams_(config.get_bool("bigrams")) {
    if (dim_ < 1) throw std::runtime_error(fmt::format("[{}] dim must be positive", config.id()));
  }

  torch::Tensor embed(const std::vector<std::string>& texts) override {
    torch::Tensor out = torch::zeros({static_cast<long long>(texts.size()), dim_});
    auto rows = out.accessor<float, 2>();
    for (std::size_t i = 0; i < texts.size(); ++i) {
      std::vector<std::string> words = split(texts[i]);
      std::vector<std::string> terms = words;
      if (bigrams_)
        for (std::size_t w = 1; w < words.size(); ++w) terms.push_back(words[w - 1] + " " + words[w]);
      for (const auto& t : terms) {
        std::uint64_t h = fnv1a(t);
        rows[i][static_cast<long long>(h % dim_)] += (h >> 63) ? 1.0f : -1.0f;
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

  long long dim_;
  bool bigrams_;
};

moelab::Descriptor describe() {
  return moelab::Descriptor("hashed_bow", moelab::Kind::embedder, "0.1.0", "hashed word uni/bigram embedding (no model needed)")
      .integer("dim", 512, "embedding width")
      .flag("bigrams", true, "add word bigrams to unigrams");
}

}  // namespace

MOELAB_PLUGIN(describe, HashedBagOfWords)
