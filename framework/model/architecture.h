// The supported MoE architectures as data: each is one builder in architectures/<model_type>.cpp that
// returns its tensor names and layout plus a hook reading its own config.json keys; the registry
// (architectures/registry.cpp) maps model_type to builder. read_model_config reads the common keys,
// then the architecture's hook.
#pragma once

#include "config_keys.h"
#include "rope.h"
#include "route.h"

#include <array>
#include <filesystem>
#include <functional>
#include <set>
#include <string>
#include <vector>

namespace moelab {

struct ModelConfig;

enum class QkNorm { none, full_width, per_head };  // OLMoE normalizes the whole projection, Qwen3 each head

struct Architecture {
  std::string model_type;
  QkNorm qk_norm = QkNorm::none;
  bool mla = false;                  // DeepSeek multi-head latent attention
  std::string moe_module = "mlp";    // model.layers.N.<moe_module>. holds router and experts
  std::string router = "gate";       // <moe_module>.<router>.weight [E, hidden]
  std::string router_bias;           // <moe_module>.<router>.<router_bias> [E], selection-only bias, or ""
  std::array<std::string, 3> expert_names = {"gate_proj", "up_proj", "down_proj"};  // of experts.<e>.
  std::string shared_expert;         // <moe_module>.<shared_expert>. always-on expert, or ""
  std::string shared_expert_gate;    // <moe_module>.<shared_expert_gate>.weight sigmoid gate on it, or ""
  // Reads the architecture's own keys after the common ones: router spec, shared expert size, MoE
  // layer pattern, attention options (biases, sliding window), and transformers' defaults where they
  // differ. A key no hook or common reader asks about is refused unless it is known to be math-free.
  std::function<void(const ConfigKeys&, ModelConfig&)> read_config;
};

struct ModelConfig {
  Architecture arch;
  int64_t vocab_size, hidden_size, num_layers, num_heads, num_kv_heads, head_dim;
  int64_t intermediate_size, expert_intermediate_size, shared_intermediate_size = 0, num_experts;
  std::string num_experts_key;  // the config.json spelling that gave num_experts, for messages
  RouterSpec router;  // without the bias, which is a per-layer tensor
  int64_t q_lora_rank = 0, kv_lora_rank = 0, qk_nope_head_dim = 0, qk_rope_head_dim = 0, v_head_dim = 0;
  double rms_eps, clip_qkv = 0;
  RopeConfig rope;
  double softmax_scale = 1.0;     // multiplies 1/sqrt(head size) (DeepSeek's YaRN mscale_all_dim correction)
  bool qkv_bias = false, o_bias = false, tie_embeddings = false;
  bool rope_interleaved = false;  // rotary pairs (x0,x1) instead of halves
  std::vector<bool> moe_layer;    // every layer unless the hook says otherwise
  int64_t sliding_window = 0;     // a query in a sliding layer sees only the last sliding_window keys
  std::vector<bool> sliding_layer;  // no layer unless the hook says otherwise
  int64_t pad_token_id = -1, eos_token_id = -1;
  // Layers stored after the decoder's that the causal LM never runs (DeepSeek-V3's multi-token
  // prediction layers, num_nextn_predict_layers): their tensors are allowed and not loaded.
  int64_t unused_stored_layers = 0;
  std::set<std::string> keys_read;  // every config.json key the readers asked about
};

// The registered model types, in registry order (aliases included).
std::vector<std::string> supported_model_types();
// The architecture registered for model_type (model_type filled in); throws naming file and the supported types.
Architecture find_architecture(const std::string& model_type, const std::string& file);

// Top-level config.json keys that never change the computation (metadata, training-only settings).
const std::set<std::string>& math_free_config_keys();

// Reads folder/config.json; errors name the file and key and list the supported model types. A key
// that is neither read for the model's architecture nor math-free is an error naming it.
ModelConfig read_model_config(const std::filesystem::path& folder);

}  // namespace moelab
