// A sentence-transformers encoder of the all-MiniLM-L6-v2 kind read from a local folder: BERT layers
// (config.json, model.safetensors), its WordPiece tokenizer.json with [CLS] ... [SEP], mean pooling
// over real tokens and L2 normalization. max_seq_length comes from sentence_bert_config.json.
#include "moelab/moelab.h"
#include "moelab/lib/files.h"
#include "moelab/lib/json_read.h"
#include "moelab/lib/safetensors.h"
#include "moelab/lib/vocab_check.h"

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
    const std::filesystem::path config_file = folder / "config.json";
    const nlohmann::json config_json = moelab::read_json_file(config_file);
    const moelab::JsonValue c(config_json, config_file.string());
    c.expect_object();
    if (c.get_or<std::string>("model_type", "bert") != "bert")
      throw c["model_type"].error(fmt::format("\"{}\" is not supported (bert)", c["model_type"].get<std::string>()));
    if (c.get_or<std::string>("hidden_act", "gelu") != "gelu")
      throw c["hidden_act"].error(fmt::format("\"{}\" is not supported (gelu)", c["hidden_act"].get<std::string>()));
    layers_ = c["num_hidden_layers"].get<int>();
    heads_ = c["num_attention_heads"].get<int>();
    hidden_ = c["hidden_size"].get<long long>();
    eps_ = c.get_or<double>("layer_norm_eps", 1e-12);
    max_len_ = c.get_or<long long>("max_position_embeddings", 512);
    if (layers_ < 1) throw c["num_hidden_layers"].error(fmt::format("must be at least 1, found {}", layers_));
    if (heads_ < 1 || hidden_ < 1 || hidden_ % heads_ != 0)
      throw c["num_attention_heads"].error(fmt::format("must be at least 1 and divide hidden_size {}, found {}", hidden_, heads_));
    if (!(eps_ > 0)) throw c["layer_norm_eps"].error(fmt::format("must be positive, found {}", eps_));
    std::filesystem::path st_config = folder / "sentence_bert_config.json";
    if (std::filesystem::exists(st_config)) {
      const nlohmann::json st_json = moelab::read_json_file(st_config);
      max_len_ = std::min<long long>(max_len_, moelab::JsonValue(st_json, st_config.string()).get_or<long long>("max_seq_length", max_len_));
    }
    if (max_len_ < 3) throw std::runtime_error(fmt::format("{}: max_seq_length / max_position_embeddings {} leaves no room for a token between [CLS] and [SEP]", folder.string(), max_len_));
    std::filesystem::path pooling = folder / "1_Pooling" / "config.json";
    if (std::filesystem::exists(pooling)) {  // sentence-transformers < 6 and >= 6 spell it differently
      const nlohmann::json p_json = moelab::read_json_file(pooling);
      const moelab::JsonValue p(p_json, pooling.string());
      if (!p.get_or<bool>("pooling_mode_mean_tokens", false) && p.get_or<std::string>("pooling_mode", "") != "mean")
        throw std::runtime_error(fmt::format("{}: only mean pooling is supported", pooling.string()));
    }
    moelab::SafetensorsFile weights(folder / "model.safetensors");
    for (const auto& name : weights.names()) {
      std::string key = name.rfind("bert.", 0) == 0 ? name.substr(5) : name;
      w_[key] = weights.get(name).to(torch::kFloat32).clone();
    }
    check_weights(c);
    tokenizer_ = moelab::Tokenizer::from_file(folder / "tokenizer.json");
    cls_ = tokenizer_->token_id("[CLS]");
    sep_ = tokenizer_->token_id("[SEP]");
    if (cls_ < 0 || sep_ < 0) throw std::runtime_error(fmt::format("{}: needs [CLS] and [SEP] tokens", (folder / "tokenizer.json").string()));
    const std::int64_t largest = moelab::largest_token_id(*tokenizer_);
    if (largest >= vocab_)
      throw std::runtime_error(fmt::format("{}: the tokenizer can produce id {}, but {} has {} rows in embeddings.word_embeddings.weight",
                                           (folder / "tokenizer.json").string(), largest, (folder / "model.safetensors").string(), vocab_));
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
  // config.json against the tensors, before any text is embedded: every tensor the encoder reads is
  // stored with its shape, no layer beyond num_hidden_layers is stored, and the vocabulary fits.
  void check_weights(const moelab::JsonValue& c) {
    const std::string file = (settings_.path / "model.safetensors").string();
    auto expect = [&](const std::string& name, std::vector<long long> shape) {
      const Tensor& t = w(name);
      if (t.sizes().vec() != std::vector<int64_t>(shape.begin(), shape.end()))
        throw std::runtime_error(fmt::format("{}: {} has shape [{}], config.json (hidden_size {}, intermediate_size {}) expects [{}]", file, name,
                                             fmt::join(t.sizes(), ", "), hidden_, inner_, fmt::join(shape, ", ")));
      if (!torch::isfinite(t).all().item<bool>()) throw std::runtime_error(fmt::format("{}: {} holds a NaN or an infinity", file, name));
    };
    const Tensor& words = w("embeddings.word_embeddings.weight");
    vocab_ = words.size(0);
    if (c.has("vocab_size") && c["vocab_size"].get<long long>() != vocab_)
      throw c["vocab_size"].error(fmt::format("is {}, but embeddings.word_embeddings.weight in {} has {} rows", c["vocab_size"].get<long long>(), file, vocab_));
    inner_ = c.get_or<long long>("intermediate_size", w("encoder.layer.0.intermediate.dense.weight").size(0));
    expect("embeddings.word_embeddings.weight", {vocab_, hidden_});
    const long long positions = w("embeddings.position_embeddings.weight").size(0);
    const long long config_positions = c.get_or<long long>("max_position_embeddings", 512);
    if (positions != config_positions || positions < max_len_)
      throw c.optional("max_position_embeddings").error(fmt::format("is {} (and max_seq_length allows {}), but embeddings.position_embeddings.weight in {} has {} rows", config_positions, max_len_, file, positions));
    expect("embeddings.position_embeddings.weight", {positions, hidden_});
    expect("embeddings.token_type_embeddings.weight", {w("embeddings.token_type_embeddings.weight").size(0), hidden_});
    expect("embeddings.LayerNorm.weight", {hidden_});
    expect("embeddings.LayerNorm.bias", {hidden_});
    for (int l = 0; l < layers_; ++l) {
      const std::string p = fmt::format("encoder.layer.{}.", l);
      for (const char* n : {"query", "key", "value"}) {
        expect(p + "attention.self." + n + ".weight", {hidden_, hidden_});
        expect(p + "attention.self." + n + ".bias", {hidden_});
      }
      expect(p + "attention.output.dense.weight", {hidden_, hidden_});
      expect(p + "attention.output.dense.bias", {hidden_});
      expect(p + "intermediate.dense.weight", {inner_, hidden_});
      expect(p + "intermediate.dense.bias", {inner_});
      expect(p + "output.dense.weight", {hidden_, inner_});
      expect(p + "output.dense.bias", {hidden_});
      for (const char* n : {"attention.output.LayerNorm", "output.LayerNorm"}) {
        expect(p + n + ".weight", {hidden_});
        expect(p + n + ".bias", {hidden_});
      }
    }
    const std::string beyond = fmt::format("encoder.layer.{}.", layers_);
    for (const auto& [name, t] : w_)
      if (name.rfind(beyond, 0) == 0)
        throw c["num_hidden_layers"].error(fmt::format("is {}, but {} stores {} (more layers than the config names)", layers_, file, name));
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
  long long hidden_ = 0, inner_ = 0, vocab_ = 0;
  double eps_ = 1e-12;
  long long max_len_ = 512;
  std::unique_ptr<moelab::Tokenizer> tokenizer_;
  std::int64_t cls_ = -1, sep_ = -1;
  std::map<std::string, Tensor> w_;
};

}  // namespace

MOELAB_PLUGIN(options, SentenceBert)
