#include "architecture.h"

#include "moelab/files.h"

namespace moelab {

namespace {

int64_t token_id(const nlohmann::json& v) {
  if (v.is_number_integer()) return v.get<int64_t>();
  if (v.is_array() && !v.empty() && v[0].is_number_integer()) return v[0].get<int64_t>();
  return -1;
}

void check_rope(const ConfigKeys& k) {
  for (const char* scaling : {"rope_scaling", "rope_parameters"}) {
    if (!k.has(scaling)) continue;
    const nlohmann::json& s = k.json()[scaling];
    std::string kind = s.value("rope_type", s.value("type", std::string("default")));
    if (kind != "default") throw k.error(fmt::format("{} type \"{}\" is not supported yet (only default RoPE)", scaling, kind));
  }
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
  c.rope_theta = k.has("rope_parameters") && j["rope_parameters"].contains("rope_theta")
                     ? j["rope_parameters"]["rope_theta"].get<double>()
                     : k.get_or<double>("rope_theta", 10000.0);
  check_rope(k);
  c.tie_embeddings = k.get_or<bool>("tie_word_embeddings", false);
  c.qkv_bias = k.get_or<bool>("attention_bias", false);
  c.moe_layer.assign(c.num_layers, c.num_experts > 0);
  c.pad_token_id = k.has("pad_token_id") ? token_id(j["pad_token_id"]) : -1;
  c.eos_token_id = k.has("eos_token_id") ? token_id(j["eos_token_id"]) : -1;
  if (c.arch.read_config) c.arch.read_config(k, c);
  check_router(k, c);
  return c;
}

}  // namespace moelab
