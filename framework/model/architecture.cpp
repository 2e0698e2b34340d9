#include "architecture.h"

#include "moelab/lib/json_read.h"

namespace moelab {

namespace {

// Layer counts size per-layer tables before any tensor is seen; no model comes near this.
constexpr int64_t kMaxLayers = 1 << 16;

// pad_token_id or eos_token_id (for eos also a list, whose first id is kept): an id inside the
// vocabulary, -1 (none, as some configs write it) or absent.
int64_t read_token_id(const ConfigKeys& k, const std::string& key, int64_t vocab_size, bool list_allowed) {
  if (!k.has(key)) return -1;
  const JsonValue value(k.json()[key], k.file(), key);
  std::vector<int64_t> ids = list_allowed && value.json().is_array() ? value.get<std::vector<int64_t>>() : std::vector<int64_t>{value.get<int64_t>()};
  for (int64_t id : ids)
    if (id < -1 || id >= vocab_size)
      throw k.error(fmt::format("{} {} is outside the vocabulary (vocab_size = {})", key, value.json().dump(), vocab_size));
  return ids.empty() ? -1 : ids[0];
}

// Attention shapes that exist: query heads share the key/value heads evenly, rotary dimensions pair up.
void check_attention(const ConfigKeys& k, const ModelConfig& c) {
  if (c.arch.mla) {
    if (c.qk_rope_head_dim % 2 != 0) throw k.error(fmt::format("qk_rope_head_dim {} is odd: rotary dimensions come in pairs", c.qk_rope_head_dim));
    return;
  }
  if (!k.has("head_dim") && c.hidden_size % c.num_heads != 0)
    throw k.error(fmt::format("hidden_size {} is not divisible by num_attention_heads {} (and no head_dim is given)", c.hidden_size, c.num_heads));
  if (c.num_heads % c.num_kv_heads != 0)
    throw k.error(fmt::format("num_attention_heads {} is not a multiple of num_key_value_heads {}", c.num_heads, c.num_kv_heads));
  if (c.head_dim % 2 != 0) throw k.error(fmt::format("head_dim {} is odd: rotary dimensions come in pairs", c.head_dim));
}

// The router spec must describe a choice that exists: whole groups, and at least k experts left.
void check_router(const ConfigKeys& k, const ModelConfig& c) {
  const RouterSpec& r = c.router;
  if (c.num_experts == 0) return;  // a dense model never routes
  if (r.top_k < 1 || r.top_k > c.num_experts)
    throw k.error(fmt::format("num_experts_per_tok {} is not between 1 and the {} experts", r.top_k, c.num_experts));
  if (r.groups <= 1) return;
  if (c.num_experts % r.groups != 0) throw k.error(fmt::format("n_group {} does not divide the {} experts", r.groups, c.num_experts));
  const int64_t per_group = c.num_experts / r.groups;
  if (r.groups_kept < 1 || r.groups_kept > r.groups)
    throw k.error(fmt::format("topk_group {} is not between 1 and n_group {}", r.groups_kept, r.groups));
  if (r.top_k > r.groups_kept * per_group)
    throw k.error(fmt::format("num_experts_per_tok {} exceeds the {} experts in topk_group {} groups", r.top_k, r.groups_kept * per_group,
                              r.groups_kept));
  if (r.group_score == GroupScore::top2_sum && per_group < 2)
    throw k.error(fmt::format("n_group {} leaves {} expert per group; the group score sums the best two", r.groups, per_group));
}

// Every key in the file was read for this architecture or is known to be math-free.
void check_all_keys_read(const ConfigKeys& k, const std::string& model_type) {
  for (const auto& [key, value] : k.json().items()) {
    if (value.is_null() || k.keys_read().count(key) || math_free_config_keys().count(key)) continue;
    throw k.error(fmt::format("key \"{}\" is not read for {}: moelab does not implement it and it is not known to leave the "
                              "computation unchanged (remove it if it does)",
                              key, model_type));
  }
}

}  // namespace

const std::set<std::string>& math_free_config_keys() {
  static const std::set<std::string> keys = {
      "_name_or_path", "architectures", "auto_map", "dtype", "torch_dtype", "transformers_version", "tokenizer_class",
      "initializer_range", "use_cache", "bos_token_id", "output_router_logits", "output_attentions", "output_hidden_states",
      "return_dict", "pretraining_tp",  // tensor-parallel slicing in old Llama code: the same products
      // auxiliary losses of the original training, which moelab's objectives replace
      "router_aux_loss_coef", "aux_loss_alpha", "seq_aux",
      "ep_size",                   // expert-parallel degree of DeepSeek's own inference code
      "num_nextn_predict_layers",  // DeepSeek-V3's multi-token-prediction layers, not part of the causal LM
  };
  return keys;
}

ModelConfig read_model_config(const std::filesystem::path& folder) {
  std::filesystem::path file = folder / "config.json";
  if (!std::filesystem::exists(file))
    throw std::runtime_error(fmt::format("{} is not a Hugging Face model folder: it has no config.json", folder.string()));
  const nlohmann::json j = read_json_file(file);
  if (!j.is_object()) throw std::runtime_error(fmt::format("{}: expected a JSON object, found {}", file.string(), JsonValue::describe(j)));
  ConfigKeys k(j, file.string());
  ModelConfig c;
  c.arch = find_architecture(k.get<std::string>("model_type"), file.string());
  if (k.has("quantization_config"))
    throw k.error(fmt::format("quantization_config ({}) is not supported: moelab loads unquantized weights",
                              JsonValue(j, file.string()).optional("quantization_config").get_or<std::string>("quant_method", "unknown method")));
  c.vocab_size = k.at_least("vocab_size", 1);
  c.hidden_size = k.at_least("hidden_size", 1);
  c.num_layers = k.at_least("num_hidden_layers", 1);
  if (c.num_layers > kMaxLayers) throw k.error(fmt::format("num_hidden_layers = {} is not a plausible layer count (at most {})", c.num_layers, kMaxLayers));
  c.num_heads = k.at_least("num_attention_heads", 1);
  c.num_kv_heads = k.at_least_or("num_key_value_heads", 1, c.num_heads);
  c.head_dim = k.at_least_or("head_dim", 1, c.hidden_size / c.num_heads);  // a derived one is checked in check_attention
  c.intermediate_size = k.at_least("intermediate_size", 1);
  c.expert_intermediate_size = k.at_least_or("moe_intermediate_size", 1, c.intermediate_size);
  c.num_experts_key = k.first_present({"num_experts", "num_local_experts", "n_routed_experts"});
  c.num_experts = c.num_experts_key.empty() ? 0 : k.at_least(c.num_experts_key, 0);
  c.router.top_k = k.get<int64_t>("num_experts_per_tok");
  c.rms_eps = k.positive_or("rms_norm_eps", 1e-6);
  c.rope = read_rope(k);
  c.tie_embeddings = k.get_or<bool>("tie_word_embeddings", false);
  k.one_of("hidden_act", "silu", {"silu"});
  if (k.get_or<double>("attention_dropout", 0.0) != 0.0)
    throw k.error(fmt::format("attention_dropout {} is not supported (only 0)", j["attention_dropout"].dump()));
  c.moe_layer.assign(c.num_layers, c.num_experts > 0);
  c.sliding_layer.assign(c.num_layers, false);
  c.pad_token_id = read_token_id(k, "pad_token_id", c.vocab_size, /*list_allowed=*/false);
  c.eos_token_id = read_token_id(k, "eos_token_id", c.vocab_size, /*list_allowed=*/true);
  if (c.arch.read_config) c.arch.read_config(k, c);
  check_attention(k, c);
  check_router(k, c);
  check_all_keys_read(k, c.arch.model_type);
  c.keys_read = k.keys_read();
  return c;
}

}  // namespace moelab
