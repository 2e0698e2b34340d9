// The model as plugins see it: a Hugging Face MoE checkpoint running forward passes, with every MoE
// layer's routing exposed and its router (gate) weights readable, replaceable and trainable.
#pragma once

#include "moelab/transform.h"

#include <torch/types.h>

#include <array>
#include <cstdint>
#include <functional>
#include <memory>
#include <string>
#include <vector>

namespace moelab {

struct ModelInfo {
  std::string model_type;
  long long num_layers = 0, vocab_size = 0, hidden_size = 0, num_experts = 0, top_k = 0;
  std::vector<int> moe_layers;  // decoder layer indices that route to experts
  long long pad_token_id = -1, eos_token_id = -1;
};

// One MoE layer's routing in the last forward; rows are the B*T tokens in row-major order.
struct RouterTrace {
  int layer = 0;
  torch::Tensor logits;        // [N, E] float32, before any router transform
  torch::Tensor topk_ids;      // [N, k] int64, experts used
  torch::Tensor topk_weights;  // [N, k] their weights in the layer output
};

// Keys and values of earlier tokens, per layer. By default the cache grows along the sequence with every
// forward (a concatenation per layer). With `capacity` set before the first forward it is static: that
// forward allocates every layer's slots for `capacity` positions once, and every forward writes its keys
// in place at a device-side index (`cursor`) and attends over all slots through the mask, so a decode
// step neither reallocates nor asks the host where to write (what CUDA graphs need).
struct KVCache {
  std::vector<torch::Tensor> first, second;  // per layer: keys/values [rows, heads, S, dim], or MLA's latent and rotary key
  torch::Tensor mask;                        // [B, S] 1 for real tokens, 0 for padding (static: S = capacity, 0 past the filled slots)
  // Input rows per cached row in the next forwards, all reading that row's prefix without a copy (RoE:
  // one clean row then K noisy ones). Input row r continues cached row r / replicas; only the rows
  // with r % replicas == 0 are appended to the cache.
  long long replicas = 1;
  // Static cache: positions it holds (0: a growing cache), and the config key that sets them, which the
  // error of a forward that would overflow it names.
  std::int64_t capacity = 0;
  std::string capacity_key;
  torch::Tensor cursor;               // static: [rows] int64 on the model's device, each row's filled slots
  std::vector<std::int64_t> filled;   // static: the same counts, kept on the host (never read from the device)

  // Positions held: the longest row's (static), the mask's width (growing).
  long long length() const;
  // Forgets every row's `count` newest positions (RoE's exact history drops its shared forward's).
  void drop_newest(std::int64_t count);
  // Static cache: row `row` becomes a copy of row `from_row` of `from` (a static or growing cache of the same
  // model that holds at most `capacity` positions), so a finished row takes a new prompt's prefill
  // (continuous batching). Both caches must have run a forward; device copies only.
  void replace_row(std::int64_t row, const KVCache& from, std::int64_t from_row);
  // Static cache: row `row` holds nothing (a row left without a prompt, which then never outgrows the cache).
  void clear_row(std::int64_t row);
};

// Changes a layer's router logits [N, E] before top-k selection (for example RoE's Gumbel noise).
// The routing weights come from the transformed logits unless weights_from_clean is set.
struct RouterTransform {
  std::function<torch::Tensor(int layer, const torch::Tensor& logits)> selection;
  bool weights_from_clean = false;
};

// A MoE layer's routed experts, stacked [E, ...] and sharing storage with the model, so writes change
// it (quantizers). Checkpoint name of expert e's projection p: prefix + e + "." + names[p] + ".weight".
struct ExpertWeights {
  torch::Tensor gate, up, down;  // [E, I, H], [E, I, H], [E, H, I]
  std::string prefix;            // for example "model.layers.3.mlp.experts."
  std::array<std::string, 3> names;  // gate, up, down projection names ("gate_proj", or Mixtral's "w1"...)
};

// Sees each MoE layer's input [N, hidden] (after the layer's norm) and the experts chosen [N, k] during
// a forward, for calibration statistics (GPTQ Hessians) without keeping activations.
using MoeInputObserver = std::function<void(int layer, const torch::Tensor& input, const torch::Tensor& topk_ids)>;

// Skipping decoder layers whose output cannot change (router training that trains only routers in
// layer L or later: everything before L is frozen). Layer L's input is the hidden state [B, T, hidden]
// entering it, before its input norm, in a forward over input_ids [B, T] with attention_mask [B, T]
// (both as forward() uses them: on the model's device, the mask bool, all true when none was given).
struct LayerInputHooks {
  int layer = -1;  // L, a decoder layer index; -1: no hooks
  // Sees layer L's input in every forward() without a KV cache that computes it from the embeddings.
  std::function<void(const torch::Tensor& input_ids, const torch::Tensor& attention_mask, const torch::Tensor& input)> capture;
  // Asked first by every forward() without a KV cache: layer L's input for these tokens (what `capture`
  // saw for them), or an undefined tensor to run every layer. Given one, forward() runs layers L and on
  // only, with the usual positions and masks: routing() holds the MoE layers from L on, and the logits
  // and hidden_states() equal the full forward's at every real token. Padding positions of the input may
  // hold anything finite (no real token reads them); the outputs there are unspecified.
  std::function<torch::Tensor(const torch::Tensor& input_ids, const torch::Tensor& attention_mask)> start;
};

class Model {
 public:
  virtual ~Model();
  virtual const ModelInfo& info() const = 0;
  virtual torch::Device device() const = 0;
  virtual torch::ScalarType dtype() const = 0;

  // input_ids [B, T] int64; attention_mask [B, T] (1 token, 0 pad; left or right padding) or undefined.
  // With a cache, the tokens continue the cached sequence and the cache is extended. Returns float32
  // logits [B, T, V] (float64 for a float64 model); with last_only, [B, 1, V] at each row's last real
  // token only, which spares the vocabulary projection of every other position.
  virtual torch::Tensor forward(const torch::Tensor& input_ids, const torch::Tensor& attention_mask,
                                KVCache* cache = nullptr, bool last_only = false) = 0;
  // Hidden states [B, T, hidden] after the final norm in the last forward (for embedders).
  virtual const torch::Tensor& hidden_states() const = 0;
  // Routing of every MoE layer in the last forward, in layer order.
  virtual const std::vector<RouterTrace>& routing() const = 0;
  virtual void set_router_transform(RouterTransform transform) = 0;

  // The router (gate) weight [E, hidden] of a MoE layer, kept in float32; set requires_grad on it to train it.
  virtual torch::Tensor router_weight(int layer) = 0;
  // All weights by checkpoint name, sharing storage with the model.
  virtual NamedTensors named_weights() = 0;
  // The routed experts of a MoE layer (throws for a dense layer).
  virtual ExpertWeights expert_weights(int layer) = 0;
  // Installs (or, with an empty function, removes) the observer of MoE layer inputs.
  virtual void set_moe_input_observer(MoeInputObserver observer) = 0;
  // Bytes a KV cache holds per row and position (every layer's keys and values, or MLA's latent and
  // rotary key, in the model's dtype, and the cache's int64 mask): what a static cache of R rows and P
  // positions allocates is R x P x this. 0 when unknown.
  virtual int64_t kv_cache_bytes_per_position() const { return 0; }
  // Installs (or, with layer -1, removes) the layer input hooks. False when this model has none: it then
  // runs every layer and calls no hook.
  virtual bool set_layer_input_hooks(LayerInputHooks hooks) {
    (void)hooks;
    return false;
  }
};

}  // namespace moelab
