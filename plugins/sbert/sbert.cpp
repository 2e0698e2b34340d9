// A sentence-transformers encoder of the all-MiniLM-L6-v2 kind read from a local folder: BERT layers
// (config.json, model.safetensors), its WordPiece tokenizer.json with [CLS] ... [SEP], mean pooling
// over real tokens and L2 normalization. max_seq_length comes from sentence_bert_config.json.
#include "moelab/moelab.h"
#include "moelab/lib/files.h"
#include "moelab/lib/safetensors.h"

#include <cmath>

namespace {

using torch::Tensor;

Tensor layer_norm(const Tensor& x, const Tensor& w, const Tensor& b, double eps) {
  Tensor mean = x.mean(-1, true), var = (x - mean).pow(2).mean(-1, true);
  return (x - mean) / (var + eps).sqrt() * w + b;
}
Tensor linear(const Tensor& x, const Tensor& w, const Tensor& b) { return torch::matmul(x, w.t()) + b; }

struct Settings {
  std::filesystem::path path;
  std::size_t batch_size;
};

const moelab::Options<Settings>& options() {
  static const auto o =
      moelab::Options<Settings>("sbert", moelab::Kind::embedder, "0.1.0", "sentence-transformers BERT encoder (all-MiniLM-L6-v2 kind), mean pooled")
          .path("path", &Settings::path, moelab::required, "the sentence-transformers folder (config.json, model.safetensors, tokenizer.json)")
          .integer("batch_size", &Settings::batch_size, 32, "texts per forward").at_least(1);
  return o;
}

class SentenceBert final : public moelab::Embedder {
 public:
  SentenceBert(const moelab::Config& config, moelab::RunContext&) : settings_(options().read(config)) {
    const std::filesystem::path& folder = settings_.path;
    nlohmann::json c = read_json(folder / "config.json");
    if (c.value("model_type", "bert") != "bert")
      throw std::runtime_error(fmt::format("{}: model_type \"{}\" is not supported (bert)", (folder / "config.json").string(), c.value("model_type", "")));
    if (c.value("hidden_act", "gelu") != "gelu")
      throw std::runtime_error(fmt::format("{}: hidden_act \"{}\" is not supported (gelu)", (folder / "config.json").string(), c.value("hidden_act", "")));
    layers_ = c.at("num_hidden_layers").get<int>();
    heads_ = c.at("num_attention_heads").get<int>();
    eps_ = c.value("layer_norm_eps", 1e-12);
    max_len_ = c.value("max_position_embeddings", 512);
    std::filesystem::path st_config = folder / "sentence_bert_config.json";
    if (std::filesystem::exists(st_config)) max_len_ = std::min<long long>(max_len_, read_json(st_config).value("max_seq_length", max_len_));
    std::filesystem::path pooling = folder / "1_Pooling" / "config.json";
    if (std::filesystem::exists(pooling)) {  // sentence-transformers < 6 and >= 6 spell it differently
      nlohmann::json p = read_json(pooling);
      if (!p.value("pooling_mode_mean_tokens", false) && p.value("pooling_mode", "") != "mean")
        throw std::runtime_error(fmt::format("{}: only mean pooling is supported", pooling.string()));
    }
    moelab::SafetensorsFile weights(folder / "model.safetensors");
    for (const auto& name : weights.names()) {
      std::string key = name.rfind("bert.", 0) == 0 ? name.substr(5) : name;
      w_[key] = weights.get(name).to(torch::kFloat32).clone();
    }
    tokenizer_ = moelab::Tokenizer::from_file(folder / "tokenizer.json");
    cls_ = tokenizer_->token_id("[CLS]");
    sep_ = tokenizer_->token_id("[SEP]");
    if (cls_ < 0 || sep_ < 0) throw std::runtime_error(fmt::format("{}: needs [CLS] and [SEP] tokens", (folder / "tokenizer.json").string()));
  }

  Tensor embed(const std::vector<std::string>& texts) override {
    torch::NoGradGuard no_grad;
    std::vector<Tensor> out;
    for (std::size_t start = 0; start < texts.size(); start += settings_.batch_size) {
      std::vector<std::vector<std::int64_t>> rows;
      std::size_t width = 0;
      for (std::size_t i = start; i < std::min(texts.size(), start + settings_.batch_size); ++i) {
        std::vector<std::int64_t> ids = tokenizer_->encode(texts[i]);
        if (ids.size() + 2 > static_cast<std::size_t>(max_len_)) ids.resize(max_len_ - 2);
        ids.insert(ids.begin(), cls_);
        ids.push_back(sep_);
        width = std::max(width, ids.size());
        rows.push_back(std::move(ids));
      }
      Tensor ids = torch::zeros({static_cast<long long>(rows.size()), static_cast<long long>(width)}, torch::kInt64);
      Tensor mask = torch::zeros_like(ids);
      for (std::size_t r = 0; r < rows.size(); ++r)
        for (std::size_t t = 0; t < rows[r].size(); ++t) {
          ids[r][t] = rows[r][t];
          mask[r][t] = 1;
        }
      Tensor h = encode(ids, mask);
      Tensor m = mask.unsqueeze(-1).to(torch::kFloat32);
      Tensor mean = (h * m).sum(1) / m.sum(1).clamp_min(1e-9);
      out.push_back(mean / mean.norm(2, 1, true).clamp_min(1e-12));
    }
    return torch::cat(out);
  }

 private:
  static nlohmann::json read_json(const std::filesystem::path& file) {
    try {
      return nlohmann::json::parse(moelab::read_file(file));
    } catch (const nlohmann::json::exception& e) {
      throw std::runtime_error(fmt::format("{}: not valid JSON ({})", file.string(), e.what()));
    }
  }

  const Tensor& w(const std::string& name) const {
    auto it = w_.find(name);
    if (it == w_.end()) throw std::runtime_error(fmt::format("{}: model.safetensors lacks {}", settings_.path.string(), name));
    return it->second;
  }

  // BERT's encoder: post-norm layers, exact (erf) GELU; padded keys get a large negative score.
  Tensor encode(const Tensor& ids, const Tensor& mask) const {
    const long long B = ids.size(0), T = ids.size(1);
    Tensor x = w("embeddings.word_embeddings.weight").index_select(0, ids.reshape(-1)).view({B, T, -1}) +
               w("embeddings.position_embeddings.weight").narrow(0, 0, T).unsqueeze(0) + w("embeddings.token_type_embeddings.weight")[0];
    x = layer_norm(x, w("embeddings.LayerNorm.weight"), w("embeddings.LayerNorm.bias"), eps_);
    Tensor bias = (1 - mask.to(torch::kFloat32)).mul(std::numeric_limits<float>::lowest()).view({B, 1, 1, T});
    const long long D = x.size(-1) / heads_;
    for (int l = 0; l < layers_; ++l) {
      std::string p = fmt::format("encoder.layer.{}.", l);
      auto heads = [&](const std::string& n) {
        return linear(x, w(p + "attention.self." + n + ".weight"), w(p + "attention.self." + n + ".bias")).view({B, T, heads_, D}).transpose(1, 2);
      };
      Tensor scores = torch::matmul(heads("query"), heads("key").transpose(-1, -2)) / std::sqrt(static_cast<double>(D)) + bias;
      Tensor context = torch::matmul(scores.softmax(-1), heads("value")).transpose(1, 2).reshape({B, T, -1});
      x = layer_norm(x + linear(context, w(p + "attention.output.dense.weight"), w(p + "attention.output.dense.bias")),
                     w(p + "attention.output.LayerNorm.weight"), w(p + "attention.output.LayerNorm.bias"), eps_);
      Tensor inner = linear(x, w(p + "intermediate.dense.weight"), w(p + "intermediate.dense.bias"));
      inner = 0.5 * inner * (1 + torch::erf(inner / std::sqrt(2.0)));
      x = layer_norm(x + linear(inner, w(p + "output.dense.weight"), w(p + "output.dense.bias")), w(p + "output.LayerNorm.weight"),
                     w(p + "output.LayerNorm.bias"), eps_);
    }
    return x;
  }

  Settings settings_;
  int layers_ = 0, heads_ = 0;
  double eps_ = 1e-12;
  long long max_len_ = 512;
  std::unique_ptr<moelab::Tokenizer> tokenizer_;
  std::int64_t cls_ = -1, sep_ = -1;
  std::map<std::string, Tensor> w_;
};

}  // namespace

MOELAB_PLUGIN(options, SentenceBert)
