#include "architecture.h"

#include "moelab/files.h"

#include <fmt/format.h>
#include <fmt/ranges.h>

#include <algorithm>
#include <stdexcept>

namespace moelab {

const std::vector<Architecture>& architectures() {
  static const std::vector<Architecture> table = {
      // model_type   qk_norm              router                          mla    interleaved moe module
      {"olmoe", QkNorm::full_width, RouterRule::softmax_topk, false, false, "mlp", {"gate_proj", "up_proj", "down_proj"}, "", false},
      {"mixtral", QkNorm::none, RouterRule::softmax_topk_renorm, false, false, "block_sparse_moe", {"w1", "w3", "w2"}, "", false},
      {"qwen2_moe", QkNorm::none, RouterRule::softmax_topk, false, false, "mlp", {"gate_proj", "up_proj", "down_proj"}, "shared_expert", true},
      {"qwen3_moe", QkNorm::per_head, RouterRule::softmax_topk, false, false, "mlp", {"gate_proj", "up_proj", "down_proj"}, "", false},
      {"deepseek_v2", QkNorm::none, RouterRule::group_limited_topk, true, true, "mlp", {"gate_proj", "up_proj", "down_proj"}, "shared_experts", false},
  };
  return table;
}

namespace {

class Keys {
 public:
  Keys(const nlohmann::json& j, std::string file) : j_(j), file_(std::move(file)) {}

  bool has(const std::string& key) const { return j_.contains(key) && !j_[key].is_null(); }

  template <class T>
  T get(const std::string& key) const {
    if (!has(key)) throw std::runtime_error(fmt::format("{}: missing key \"{}\"", file_, key));
    try {
      return j_[key].get<T>();
    } catch (const nlohmann::json::exception&) {
      throw std::runtime_error(fmt::format("{}: key \"{}\" has the wrong type ({})", file_, key, j_[key].dump()));
    }
  }
  template <class T>
  T get_or(const std::string& key, T fallback) const { return has(key) ? get<T>(key) : fallback; }
  // The first of several spellings that is present (configs rename keys across versions).
  template <class T>
  T first_of(std::initializer_list<const char*> keys, T fallback) const {
    for (const char* k : keys)
      if (has(k)) return get<T>(k);
    return fallback;
  }
  const nlohmann::json& json() const { return j_; }

 private:
  const nlohmann::json& j_;
  std::string file_;
};

int64_t token_id(const nlohmann::json& v) {
  if (v.is_number_integer()) return v.get<int64_t>();
  if (v.is_array() && !v.empty() && v[0].is_number_integer()) return v[0].get<int64_t>();
  return -1;
}

}  // namespace

ModelConfig read_model_config(const std::filesystem::path& folder) {
  std::filesystem::path file = folder / "config.json";
  if (!std::filesystem::exists(file))
    throw std::runtime_error(fmt::format("{} is not a Hugging Face model folder: it has no config.json", folder.string()));
  nlohmann::json j;
  try {
    j = nlohmann::json::parse(read_file(file));
  } catch (const nlohmann::json::exception& e) {
    throw std::runtime_error(fmt::format("{}: not valid JSON ({})", file.string(), e.what()));
  }
  Keys k(j, file.string());
  std::string type = k.get<std::string>("model_type");
  auto it = std::find_if(architectures().begin(), architectures().end(), [&](const auto& a) { return a.model_type == type; });
  if (it == architectures().end()) {
    std::vector<std::string> names;
    for (const auto& a : architectures()) names.push_back(a.model_type);
    throw std::runtime_error(fmt::format("{}: model_type \"{}\" is not supported; supported: {}", file.string(), type, fmt::join(names, ", ")));
  }
  ModelConfig c;
  c.arch = &*it;
  c.vocab_size = k.get<int64_t>("vocab_size");
  c.hidden_size = k.get<int64_t>("hidden_size");
  c.num_layers = k.get<int64_t>("num_hidden_layers");
  c.num_heads = k.get<int64_t>("num_attention_heads");
  c.num_kv_heads = k.get_or<int64_t>("num_key_value_heads", c.num_heads);
  c.head_dim = k.get_or<int64_t>("head_dim", c.hidden_size / c.num_heads);
  c.intermediate_size = k.get<int64_t>("intermediate_size");
  c.expert_intermediate_size = k.get_or<int64_t>("moe_intermediate_size", c.intermediate_size);
  c.num_experts = k.first_of<int64_t>({"num_experts", "num_local_experts", "n_routed_experts"}, 0);
  c.top_k = k.get<int64_t>("num_experts_per_tok");
  c.rms_eps = k.get_or<double>("rms_norm_eps", 1e-6);
  c.rope_theta = k.has("rope_parameters") && j["rope_parameters"].contains("rope_theta")
                     ? j["rope_parameters"]["rope_theta"].get<double>()
                     : k.get_or<double>("rope_theta", 10000.0);
  for (const char* scaling : {"rope_scaling", "rope_parameters"}) {
    if (!k.has(scaling)) continue;
    std::string kind = j[scaling].value("rope_type", j[scaling].value("type", std::string("default")));
    if (kind != "default")
      throw std::runtime_error(fmt::format("{}: {} type \"{}\" is not supported yet (only default RoPE)", file.string(), scaling, kind));
  }
  c.norm_topk_prob = k.get_or<bool>("norm_topk_prob", false);
  c.tie_embeddings = k.get_or<bool>("tie_word_embeddings", false);
  c.clip_qkv = k.get_or<double>("clip_qkv", 0.0);
  c.qkv_bias = type == "qwen2_moe" ? k.get_or<bool>("qkv_bias", true) : k.get_or<bool>("attention_bias", false);
  if (c.arch->shared_expert == "shared_expert") c.shared_intermediate_size = k.get<int64_t>("shared_expert_intermediate_size");
  if (c.arch->shared_expert == "shared_experts")
    c.shared_intermediate_size = c.expert_intermediate_size * k.get_or<int64_t>("n_shared_experts", 0);
  if (c.arch->mla) {
    c.q_lora_rank = k.get_or<int64_t>("q_lora_rank", 0);
    c.kv_lora_rank = k.get<int64_t>("kv_lora_rank");
    c.qk_nope_head_dim = k.get<int64_t>("qk_nope_head_dim");
    c.qk_rope_head_dim = k.get<int64_t>("qk_rope_head_dim");
    c.v_head_dim = k.get<int64_t>("v_head_dim");
    c.routed_scaling_factor = k.get_or<double>("routed_scaling_factor", 1.0);
    if (k.get_or<std::string>("topk_method", "greedy") == "group_limited_greedy") {
      c.n_group = k.get<int64_t>("n_group");
      c.topk_group = k.get<int64_t>("topk_group");
    }
    if (k.has("scoring_func") && k.get<std::string>("scoring_func") != "softmax")
      throw std::runtime_error(fmt::format("{}: scoring_func \"{}\" is not supported (softmax only)", file.string(), k.get<std::string>("scoring_func")));
  }
  std::vector<int64_t> mlp_only = k.get_or<std::vector<int64_t>>("mlp_only_layers", {});
  int64_t sparse_step = k.get_or<int64_t>("decoder_sparse_step", 1);
  int64_t first_dense = k.get_or<int64_t>("first_k_dense_replace", 0);
  int64_t layer_freq = k.get_or<int64_t>("moe_layer_freq", 1);
  for (int64_t i = 0; i < c.num_layers; ++i)
    c.moe_layer.push_back(c.num_experts > 0 && std::find(mlp_only.begin(), mlp_only.end(), i) == mlp_only.end() &&
                          (i + 1) % sparse_step == 0 && i >= first_dense && i % layer_freq == 0);
  c.pad_token_id = k.has("pad_token_id") ? token_id(j["pad_token_id"]) : -1;
  c.eos_token_id = k.has("eos_token_id") ? token_id(j["eos_token_id"]) : -1;
  return c;
}

}  // namespace moelab
