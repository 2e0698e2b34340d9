#include "architecture.h"

#include "moelab/lib/files.h"

namespace moelab {

namespace {

int64_t token_id(const nlohmann::json& v) {
  if (v.is_number_integer()) return v.get<int64_t>();
  if (v.is_array() && !v.empty() && v[0].is_number_integer()) return v[0].get<int64_t>();
  return -1;
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
  nlohmann::json j;
  try {
    j = nlohmann::json::parse(read_file(file));
  } catch (const nlohmann::json::exception& e) {
    throw std::runtime_error(fmt::format("{}: not valid JSON ({})", file.string(), e.what()));
  }
  ConfigKeys k(j, file.string());
  ModelConfig c;
  c.arch = find_architecture(k.get<std::string>("model_type"), file.string());
  if (k.has("quantization_config"))
    throw k.error(fmt::format("quantization_config ({}) is not supported: moelab loads unquantized weights",
                              j["quantization_config"].value("quant_method", std::string("unknown method"))));
  c.vocab_size = k.get<int64_t>("vocab_size");
  c.hidden_size = k.get<int64_t>("hidden_size");
  c.num_layers = k.get<int64_t>("num_hidden_layers");
  c.num_heads = k.get<int64_t>("num_attention_heads");
  c.num_kv_heads = k.get_or<int64_t>("num_key_value_heads", c.num_heads);
  c.head_dim = k.get_or<int64_t>("head_dim", c.hidden_size / c.num_heads);
  c.intermediate_size = k.get<int64_t>("intermediate_size");
  c.expert_intermediate_size = k.get_or<int64_t>("moe_intermediate_size", c.intermediate_size);
  c.num_experts = k.first_of<int64_t>({"num_experts", "num_local_experts", "n_routed_experts"}, 0);
  c.router.top_k = k.get<int64_t>("num_experts_per_tok");
  c.rms_eps = k.get_or<double>("rms_norm_eps", 1e-6);
  c.rope = read_rope(k);
  c.tie_embeddings = k.get_or<bool>("tie_word_embeddings", false);
  k.one_of("hidden_act", "silu", {"silu"});
  if (k.get_or<double>("attention_dropout", 0.0) != 0.0)
    throw k.error(fmt::format("attention_dropout {} is not supported (only 0)", j["attention_dropout"].dump()));
  c.moe_layer.assign(c.num_layers, c.num_experts > 0);
  c.sliding_layer.assign(c.num_layers, false);
  c.pad_token_id = k.has("pad_token_id") ? token_id(j["pad_token_id"]) : -1;
  c.eos_token_id = k.has("eos_token_id") ? token_id(j["eos_token_id"]) : -1;
  if (c.arch.read_config) c.arch.read_config(k, c);
  check_router(k, c);
  check_all_keys_read(k, c.arch.model_type);
  c.keys_read = k.keys_read();
  return c;
}

}  // namespace moelab
