#include "checkpoint_check.h"

#include <fmt/format.h>
#include <fmt/ranges.h>

#include <algorithm>
#include <cctype>
#include <limits>
#include <map>
#include <set>
#include <stdexcept>

namespace moelab {

namespace fs = std::filesystem;

namespace {

struct Dim {
  int64_t size;
  std::string key;
};

class Layout {
 public:
  explicit Layout(std::string config_file) : file_(std::move(config_file)) {}

  Dim times(const Dim& a, const Dim& b) const {
    int64_t out = 0;
    if (__builtin_mul_overflow(a.size, b.size, &out))
      throw std::runtime_error(fmt::format("{}: {} * {} = {} * {} overflows a 64-bit size", file_, a.key, b.key, a.size, b.size));
    return {out, a.key + "*" + b.key};
  }
  Dim plus(const Dim& a, const Dim& b) const {
    int64_t out = 0;
    if (__builtin_add_overflow(a.size, b.size, &out))
      throw std::runtime_error(fmt::format("{}: {} + {} = {} + {} overflows a 64-bit size", file_, a.key, b.key, a.size, b.size));
    return {out, "(" + a.key + "+" + b.key + ")"};
  }
  void add(std::string name, const std::vector<Dim>& dims, bool required = true) {
    ExpectedTensor t{std::move(name), {}, {}, required};
    for (const Dim& d : dims) {
      t.shape.push_back(d.size);
      t.dims.push_back(d.key);
    }
    tensors.push_back(std::move(t));
  }

  std::vector<ExpectedTensor> tensors;

 private:
  std::string file_;
};

void add_attention(Layout& l, const ModelConfig& c, const std::string& at, const Dim& H) {
  const Dim heads{c.num_heads, "num_attention_heads"};
  if (c.arch.mla) {
    const Dim nope{c.qk_nope_head_dim, "qk_nope_head_dim"}, rope{c.qk_rope_head_dim, "qk_rope_head_dim"}, v{c.v_head_dim, "v_head_dim"};
    const Dim kv_lora{c.kv_lora_rank, "kv_lora_rank"}, q_rows = l.times(heads, l.plus(nope, rope));
    if (c.q_lora_rank > 0) {
      const Dim q_lora{c.q_lora_rank, "q_lora_rank"};
      l.add(at + "q_a_proj.weight", {q_lora, H});
      l.add(at + "q_a_layernorm.weight", {q_lora});
      l.add(at + "q_b_proj.weight", {q_rows, q_lora});
    } else {
      l.add(at + "q_proj.weight", {q_rows, H});
    }
    l.add(at + "kv_a_proj_with_mqa.weight", {l.plus(kv_lora, rope), H});
    l.add(at + "kv_a_layernorm.weight", {kv_lora});
    l.add(at + "kv_b_proj.weight", {l.times(heads, l.plus(nope, v)), kv_lora});
    l.add(at + "o_proj.weight", {H, l.times(heads, v)});
    return;
  }
  const Dim D{c.head_dim, "head_dim"}, Q = l.times(heads, D), KV = l.times({c.num_kv_heads, "num_key_value_heads"}, D);
  l.add(at + "q_proj.weight", {Q, H});
  l.add(at + "k_proj.weight", {KV, H});
  l.add(at + "v_proj.weight", {KV, H});
  if (c.qkv_bias) {
    l.add(at + "q_proj.bias", {Q});
    l.add(at + "k_proj.bias", {KV});
    l.add(at + "v_proj.bias", {KV});
  }
  if (c.o_bias) l.add(at + "o_proj.bias", {H});
  if (c.arch.qk_norm == QkNorm::full_width) {
    l.add(at + "q_norm.weight", {Q});
    l.add(at + "k_norm.weight", {KV});
  } else if (c.arch.qk_norm == QkNorm::per_head) {
    l.add(at + "q_norm.weight", {D});
    l.add(at + "k_norm.weight", {D});
  }
  l.add(at + "o_proj.weight", {H, Q});
}

void add_mlp(Layout& l, const std::string& p, const std::array<std::string, 3>& names, const Dim& I, const Dim& H) {
  l.add(p + names[0] + ".weight", {I, H});
  l.add(p + names[1] + ".weight", {I, H});
  l.add(p + names[2] + ".weight", {H, I});
}

// "model.layers.<n>." -> n, or -1 for other names (and for indices too long to be one).
int64_t index_after(const std::string& name, const std::string& prefix) {
  if (name.compare(0, prefix.size(), prefix) != 0) return -1;
  std::size_t end = prefix.size();
  while (end < name.size() && std::isdigit(static_cast<unsigned char>(name[end]))) ++end;
  if (end == prefix.size() || end - prefix.size() > 12 || end >= name.size() || name[end] != '.') return -1;
  return std::stoll(name.substr(prefix.size(), end - prefix.size()));
}

// "3-5" or "3" for a set of indices, "0-2, 5" for gaps.
std::string ranges(const std::set<int64_t>& indices) {
  std::vector<std::string> parts;
  for (auto it = indices.begin(); it != indices.end();) {
    int64_t first = *it, last = *it;
    while (++it != indices.end() && *it == last + 1) last = *it;
    parts.push_back(first == last ? std::to_string(first) : fmt::format("{}-{}", first, last));
  }
  return fmt::format("{}", fmt::join(parts, ", "));
}

std::string listed(const std::vector<std::string>& items) {
  const std::size_t shown = std::min<std::size_t>(items.size(), 12);
  return fmt::format("{}{}", fmt::join(items.begin(), items.begin() + shown, ", "), items.size() > shown ? ", ..." : "");
}

// The stored layers against num_hidden_layers, before any per-layer name is built.
void check_layer_count(const ModelConfig& c, const std::vector<std::string>& names, const std::string& folder, const std::string& config) {
  std::set<int64_t> stored, beyond;
  for (const std::string& name : names) {
    const int64_t n = index_after(name, "model.layers.");
    if (n < 0) continue;
    stored.insert(n);
    if (n >= c.num_layers + c.unused_stored_layers) beyond.insert(n);
  }
  const std::string extra = c.unused_stored_layers > 0 ? fmt::format(" (+ num_nextn_predict_layers = {})", c.unused_stored_layers) : "";
  if (!beyond.empty())
    throw std::runtime_error(fmt::format("{}: model.layers.{}.* stored (layers {}), but {} num_hidden_layers = {}{}: the config and the weights disagree",
                                         folder, *beyond.begin(), ranges(beyond), config, c.num_layers, extra));
  for (int64_t n = 0; n < c.num_layers; ++n)
    if (!stored.count(n))
      throw std::runtime_error(fmt::format("{}: no model.layers.{}.* tensors, but {} num_hidden_layers = {} (stored layers: {})", folder, n,
                                           config, c.num_layers, stored.empty() ? "none" : ranges(stored)));
}

// The config.json keys that decide which layers are MoE layers, for messages.
std::string moe_pattern_keys(const ModelConfig& c) {
  if (c.num_experts == 0) return c.num_experts_key.empty() ? "no num_experts key" : c.num_experts_key + " = 0";
  if (c.arch.mla) return "first_k_dense_replace, moe_layer_freq";
  if (c.arch.model_type.rfind("qwen", 0) == 0) return "mlp_only_layers, decoder_sparse_step";
  return "every layer";
}

// Each MoE layer's stored experts against the config's expert count; no experts in dense layers.
void check_expert_counts(const ModelConfig& c, const std::vector<std::string>& names, const std::string& folder, const std::string& config) {
  std::map<int64_t, std::set<int64_t>> stored;
  for (const std::string& name : names) {
    const int64_t layer = index_after(name, "model.layers.");
    if (layer < 0 || layer >= c.num_layers) continue;
    const int64_t e = index_after(name, fmt::format("model.layers.{}.{}.experts.", layer, c.arch.moe_module));
    if (e < 0) continue;
    if (!c.moe_layer[layer])
      throw std::runtime_error(fmt::format("{}: {} stored, but layer {} is dense with {} (its MoE layer pattern: {})", folder, name, layer, config,
                                           moe_pattern_keys(c)));
    stored[layer].insert(e);
  }
  const std::string key = c.num_experts_key.empty() ? "num_experts" : c.num_experts_key;
  for (int64_t layer = 0; layer < c.num_layers; ++layer) {
    if (!c.moe_layer[layer]) continue;
    const std::set<int64_t>& experts = stored[layer];
    const std::string prefix = fmt::format("model.layers.{}.{}.experts", layer, c.arch.moe_module);
    std::set<int64_t> beyond(experts.lower_bound(c.num_experts), experts.end());
    if (!beyond.empty())
      throw std::runtime_error(fmt::format("{}: {}.{}.* stored (experts {}), but {} {} = {}: the config and the weights disagree", folder, prefix,
                                           *beyond.begin(), ranges(beyond), config, key, c.num_experts));
    if (static_cast<int64_t>(experts.size()) < c.num_experts)
      throw std::runtime_error(fmt::format("{}: {} holds {} of the {} experts that {} {} asks for (stored: {})", folder, prefix, experts.size(),
                                           c.num_experts, config, key, experts.empty() ? "none" : ranges(experts)));
  }
}

// Buffers some checkpoints carry that the config already determines.
bool ignorable(const std::string& name) {
  const std::string suffix = "rotary_emb.inv_freq";
  return name.size() >= suffix.size() && name.compare(name.size() - suffix.size(), suffix.size(), suffix) == 0;
}

bool floating(torch::ScalarType t) { return t == torch::kFloat32 || t == torch::kFloat16 || t == torch::kBFloat16 || t == torch::kFloat64; }

}  // namespace

std::vector<ExpectedTensor> expected_tensors(const ModelConfig& c, const std::string& config_file) {
  Layout l(config_file);
  const Dim H{c.hidden_size, "hidden_size"}, V{c.vocab_size, "vocab_size"};
  l.add("model.embed_tokens.weight", {V, H});
  l.add("model.norm.weight", {H});
  l.add("lm_head.weight", {V, H}, /*required=*/!c.tie_embeddings);
  const Architecture& a = c.arch;
  for (int64_t i = 0; i < c.num_layers; ++i) {
    const std::string p = fmt::format("model.layers.{}.", i);
    l.add(p + "input_layernorm.weight", {H});
    l.add(p + "post_attention_layernorm.weight", {H});
    add_attention(l, c, p + "self_attn.", H);
    if (!c.moe_layer[i]) {
      add_mlp(l, p + "mlp.", {"gate_proj", "up_proj", "down_proj"}, {c.intermediate_size, "intermediate_size"}, H);
      continue;
    }
    const std::string m = p + a.moe_module + ".";
    const Dim E{c.num_experts, c.num_experts_key.empty() ? "num_experts" : c.num_experts_key};
    l.add(m + a.router + ".weight", {E, H});
    if (!a.router_bias.empty()) l.add(m + a.router + "." + a.router_bias, {E});
    const Dim I{c.expert_intermediate_size, c.expert_intermediate_size == c.intermediate_size ? "intermediate_size" : "moe_intermediate_size"};
    for (int64_t e = 0; e < c.num_experts; ++e) add_mlp(l, fmt::format("{}experts.{}.", m, e), a.expert_names, I, H);
    if (a.shared_expert.empty() || c.shared_intermediate_size == 0) continue;
    const std::string shared_key = a.mla ? "n_shared_experts*moe_intermediate_size" : "shared_expert_intermediate_size";
    add_mlp(l, m + a.shared_expert + ".", {"gate_proj", "up_proj", "down_proj"}, {c.shared_intermediate_size, shared_key}, H);
    if (!a.shared_expert_gate.empty()) l.add(m + a.shared_expert_gate + ".weight", {{1, "1"}, H});
  }
  return l.tensors;
}

void check_checkpoint(const ModelConfig& c, const Checkpoint& checkpoint, const fs::path& folder_path) {
  const std::string folder = folder_path.string(), config = (folder_path / "config.json").string();
  const std::vector<std::string> names = checkpoint.names();
  check_layer_count(c, names, folder, config);
  check_expert_counts(c, names, folder, config);

  std::set<std::string> expected_names;
  std::vector<std::string> missing, wrong_shape, wrong_dtype;
  for (const ExpectedTensor& t : expected_tensors(c, config)) {
    expected_names.insert(t.name);
    if (!checkpoint.contains(t.name)) {
      if (t.required) missing.push_back(t.name);
      continue;
    }
    const SafetensorsFile& file = checkpoint.file_of(t.name);
    if (file.shape(t.name) != t.shape)
      wrong_shape.push_back(fmt::format("{} is [{}] in {}, expected [{}] ({})", t.name, fmt::join(file.shape(t.name), ", "),
                                        file.path().filename().string(), fmt::join(t.shape, ", "), fmt::join(t.dims, ", ")));
    if (!floating(file.dtype(t.name)))
      wrong_dtype.push_back(fmt::format("{} is {} in {}", t.name, c10::toString(file.dtype(t.name)), file.path().filename().string()));
  }
  if (!missing.empty())
    throw std::runtime_error(fmt::format("{}: checkpoint lacks {} tensor(s) that {} needs with {}: {}", folder, missing.size(), c.arch.model_type,
                                         config, listed(missing)));
  if (!wrong_shape.empty())
    throw std::runtime_error(fmt::format("{}: {} tensor(s) do not have the shape that {} implies: {}", folder, wrong_shape.size(), config,
                                         listed(wrong_shape)));
  if (!wrong_dtype.empty())
    throw std::runtime_error(fmt::format("{}: {} tensor(s) are not floating-point weights (F32, F16, BF16 or F64): {}", folder,
                                         wrong_dtype.size(), listed(wrong_dtype)));
  std::vector<std::string> unused;
  for (const std::string& name : names) {
    if (expected_names.count(name) || ignorable(name) || index_after(name, "model.layers.") >= c.num_layers) continue;
    unused.push_back(name);
  }
  if (!unused.empty())
    throw std::runtime_error(fmt::format("{}: {} tensor(s) that {} with {} does not use: {} (a config.json key that would use them, such as "
                                         "a bias, qk-norm or shared-expert setting, is off or missing?)",
                                         folder, unused.size(), c.arch.model_type, config, listed(unused)));
}

}  // namespace moelab
