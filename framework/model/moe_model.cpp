#include "moe_model.h"

#include "checkpoint_check.h"
#include "permute.h"
#include "kernels/kernels.h"
#include "route.h"
#include "moelab/lib/compat.h"
#include "moelab/lib/distributed.h"
#include "moelab/lib/log.h"
#include "moelab/lib/safetensors.h"

#include <fmt/format.h>
#include <fmt/ranges.h>
#include <torch/torch.h>

#include <cmath>
#include <optional>

namespace moelab {

namespace {

using torch::Tensor;
using torch::indexing::Slice;

// SiLU(gate) * up: one kernel when moelab's own kernels may run (forward only), else LibTorch's two.
Tensor silu_mul(const Tensor& gate, const Tensor& up, bool fused) {
  return fused && kernels::available(gate) && kernels::available(up) ? kernels::silu_mul(gate, up) : torch::silu(gate) * up;
}

struct Mlp {
  Tensor gate, up, down;  // [I, H], [I, H], [H, I]
  Tensor operator()(const Tensor& x, bool fused) const {
    return torch::matmul(silu_mul(torch::matmul(x, gate.t()), torch::matmul(x, up.t()), fused), down.t());
  }
};

struct Layer {
  Tensor input_norm, post_norm;
  // Standard attention.
  Tensor q, k, v, o, q_bias, k_bias, v_bias, o_bias, q_norm, k_norm;
  // MLA.
  Tensor q_a, q_a_norm, q_b, kv_a, kv_a_norm, kv_b;
  // MLP: dense, or routed experts (stacked [E, ...]) with optional shared expert.
  bool moe = false;
  Mlp dense, shared;
  Tensor router, shared_gate;
  RouterSpec routing;  // the model's spec with this layer's selection bias
  Tensor expert_gate, expert_up, expert_down;  // [E, I, H], [E, I, H], [E, H, I]
};

// Norms and attention scores run in float32 for low-precision weights, in float64 for float64 ones
// (gradient checks against finite differences).
torch::ScalarType accumulate_type(const Tensor& x) { return x.scalar_type() == torch::kFloat64 ? torch::kFloat64 : torch::kFloat32; }

Tensor rms_norm(const Tensor& x, const Tensor& weight, double eps) {
  Tensor xf = x.to(accumulate_type(x));
  xf = xf * torch::rsqrt(xf.pow(2).mean(-1, true) + eps);
  return weight * xf.to(x.scalar_type());
}

Tensor rotate_half(const Tensor& x) {
  auto half = x.size(-1) / 2;
  return torch::cat({-x.narrow(-1, half, half), x.narrow(-1, 0, half)}, -1);
}

class MoeModel final : public Model {
 public:
  MoeModel(ModelConfig config, const std::filesystem::path& folder, torch::Device device, torch::ScalarType dtype, ForwardPaths paths)
      : c_(std::move(config)), device_(device), dtype_(dtype), fused_(paths.fused_kernels) {
    ep_rank_ = paths.expert_rank;
    ep_ranks_ = paths.expert_ranks;
    if (ep_ranks_ > c_.num_experts)
      throw std::runtime_error(fmt::format("[model] placement = \"experts\": {} ranks for {} experts per layer; use at most {} ranks", ep_ranks_,
                                           c_.num_experts, c_.num_experts));
    const auto [first, end] = distributed::shard_range(static_cast<std::size_t>(c_.num_experts), ep_rank_, ep_ranks_);
    first_expert_ = static_cast<int64_t>(first);
    local_experts_ = static_cast<int64_t>(end - first);
    info_.model_type = c_.arch.model_type;
    info_.num_layers = c_.num_layers;
    info_.vocab_size = c_.vocab_size;
    info_.hidden_size = c_.hidden_size;
    info_.num_experts = c_.num_experts;
    info_.top_k = c_.router.top_k;
    info_.pad_token_id = c_.pad_token_id;
    info_.eos_token_id = c_.eos_token_id;
    for (int i = 0; i < c_.num_layers; ++i)
      if (c_.moe_layer[i]) info_.moe_layers.push_back(i);
    load(folder);
    grouped_mm_ = ep_ranks_ == 1 && paths.grouped_mm && compat::kHasGroupedMm && device_.is_cuda() && dtype_ == torch::kBFloat16 && c_.hidden_size % 8 == 0 &&
                  c_.expert_intermediate_size % 8 == 0;
    rotary_dim_ = c_.arch.mla ? c_.qk_rope_head_dim : c_.head_dim;
    inv_freq_ = rope_inv_freq(c_.rope, rotary_dim_).to(device_);
  }

  const ModelInfo& info() const override { return info_; }
  torch::Device device() const override { return device_; }
  torch::ScalarType dtype() const override { return dtype_; }
  bool uses_grouped_mm() const { return grouped_mm_; }
  int64_t local_experts() const { return local_experts_; }
  // moelab's own kernels run where they may: built, on the GPU, and not under autograd (kernels.h).
  bool uses_fused_kernels() const { return fused_ && kernels::available(embed_); }
  const std::vector<RouterTrace>& routing() const override { return routing_; }
  const Tensor& hidden_states() const override { return hidden_; }
  void set_router_transform(RouterTransform transform) override { transform_ = std::move(transform); }

  Tensor router_weight(int layer) override {
    if (layer < 0 || layer >= c_.num_layers || !layers_[layer].moe)
      throw std::runtime_error(fmt::format("layer {} is not a MoE layer; MoE layers: {}", layer, fmt::join(info_.moe_layers, ", ")));
    return layers_[layer].router;
  }

  NamedTensors named_weights() override { return named_; }

  int64_t kv_cache_bytes_per_position() const override {
    const int64_t per_layer = c_.arch.mla ? c_.kv_lora_rank + c_.qk_rope_head_dim : 2 * c_.num_kv_heads * c_.head_dim;
    return c_.num_layers * per_layer * static_cast<int64_t>(c10::elementSize(dtype_)) + static_cast<int64_t>(sizeof(int64_t));
  }

  ExpertWeights expert_weights(int layer) override {
    router_weight(layer);  // validates the layer
    if (ep_ranks_ > 1)
      throw std::runtime_error(fmt::format("layer {}'s expert weights: with [model] placement = \"experts\" this rank holds experts {}..{} of "
                                           "{} only; stages that read or replace whole expert tensors (alpha, quantize) need placement = \"single\"",
                                           layer, first_expert_, first_expert_ + local_experts_ - 1, c_.num_experts));
    const Layer& L = layers_[layer];
    return {L.expert_gate, L.expert_up, L.expert_down, fmt::format("model.layers.{}.{}.experts.", layer, c_.arch.moe_module),
            {c_.arch.expert_names[0], c_.arch.expert_names[1], c_.arch.expert_names[2]}};
  }

  void set_moe_input_observer(MoeInputObserver observer) override { observer_ = std::move(observer); }

  bool set_layer_input_hooks(LayerInputHooks hooks) override {
    if (hooks.layer < -1 || hooks.layer >= c_.num_layers)
      throw std::runtime_error(fmt::format("layer input hooks: layer {} is not a decoder layer of this {}-layer model", hooks.layer, c_.num_layers));
    hooks_ = std::move(hooks);
    return true;
  }

  Tensor forward(const Tensor& input_ids_in, const Tensor& attention_mask, KVCache* cache, bool last_only) override {
    Tensor input_ids = input_ids_in.to(device_);
    const int64_t B = input_ids.size(0), T = input_ids.size(1);
    const int64_t R = cache ? cache->replicas : 1;
    if (R < 1 || B % R != 0) throw std::runtime_error(fmt::format("forward: {} rows are not a multiple of the cache's {} replicas", B, R));
    Tensor mask = attention_mask.defined() ? attention_mask.to(device_, torch::kBool) : torch::ones({B, T}, torch::dtype(torch::kBool).device(device_));
    const bool fixed = cache && cache->capacity > 0;
    int64_t past = cache ? cache->length() : 0;
    if (fixed) prepare_static(*cache, B / R, T);
    // Static cache: where each row's tokens go [B / R, T] (a device index, so the host never asks where).
    Tensor fresh_index = fixed ? cache->cursor.unsqueeze(1) + torch::arange(T, cache->cursor.options()) : Tensor();
    Tensor past_mask = fixed ? cache->mask.to(torch::kBool)
                             : past > 0 ? cache->mask.to(device_, torch::kBool) : torch::zeros({B / R, 0}, mask.options());
    Tensor past_rows = R > 1 ? past_mask.repeat_interleave(R, 0) : past_mask;
    // Positions count real tokens only, so left padding gives the same positions as no padding.
    Tensor positions = fixed ? (past_rows.sum(1, /*keepdim=*/true) + mask.to(torch::kInt64).cumsum(1) - 1).clamp_min(0)
                             : (torch::cat({past_rows, mask}, 1).to(torch::kInt64).cumsum(1) - 1).clamp_min(0).narrow(1, past, T);
    // allowed[b, i, j]: query i may see key j (causal, not padding; itself always, to keep pad rows finite).
    // A growing cache: keys are the cached sequence then the fresh tokens. A static one: its slots after
    // this forward's write (one row), or its slots before the write then the fresh tokens (replicas).
    Tensor allowed, windowed;
    if (!fixed) {
      Tensor full_mask = torch::cat({past_rows, mask}, 1);  // [B, S]
      Tensor key_index = torch::arange(past + T, torch::dtype(torch::kInt64).device(device_));
      Tensor query_index = torch::arange(past, past + T, torch::dtype(torch::kInt64).device(device_));
      std::tie(allowed, windowed) = visibility(full_mask, key_index, query_index);
    } else if (R == 1) {
      cache->mask.scatter_(1, fresh_index, mask.to(torch::kInt64));
      std::tie(allowed, windowed) =
          visibility(cache->mask.to(torch::kBool), torch::arange(cache->capacity, fresh_index.options()), fresh_index);
    } else {
      // Slots before the write are all earlier than every query (causal by construction); no diagonal there.
      Tensor fresh_key = torch::arange(T, fresh_index.options());
      auto [fresh_allowed, fresh_windowed] = visibility(mask, fresh_key, fresh_key);
      Tensor slots = torch::arange(cache->capacity, fresh_index.options());
      Tensor past_allowed = past_rows.unsqueeze(1).expand({B, T, cache->capacity}).unsqueeze(1);
      allowed = torch::cat({past_allowed, fresh_allowed}, -1);
      if (c_.sliding_window > 0) {
        Tensor in_window = (slots > fresh_index.repeat_interleave(R, 0).unsqueeze(-1) - c_.sliding_window).unsqueeze(1);
        windowed = torch::cat({past_allowed & in_window, fresh_windowed}, -1);
      }
      cache->mask.scatter_(1, fresh_index, first_replicas(mask, R).to(torch::kInt64));
    }
    // Unpadded rows without a cache need no mask: the fused kernels' causal mode (flash attention) takes
    // over. Only a mask given on the host is inspected (a device mask would cost a synchronisation).
    const bool unpadded = !attention_mask.defined() || (!attention_mask.is_cuda() && attention_mask.all().item<bool>());
    if (compat::kHasSdpa && device_.is_cuda() && !cache && unpadded) allowed = Tensor();
    const Rotary freqs = rotary(positions);

    if (cache && cache->first.empty()) {
      cache->first.resize(c_.num_layers);
      cache->second.resize(c_.num_layers);
    }
    routing_.clear();
    // Layer input hooks (model.h): start at hooks_.layer from a given input, or show that input.
    Tensor x = hooks_.layer >= 0 && !cache && hooks_.start ? hooks_.start(input_ids, mask) : Tensor();
    const bool started = x.defined();
    if (started && x.sizes() != torch::IntArrayRef({B, T, c_.hidden_size}))
      throw std::runtime_error(fmt::format("layer input hooks: the input given for layer {} is [{}], expected [{}, {}, {}]", hooks_.layer,
                                           fmt::join(x.sizes(), ", "), B, T, c_.hidden_size));
    x = started ? x.to(device_, dtype_) : embed_.index_select(0, input_ids.reshape(-1)).reshape({B, T, c_.hidden_size});
    for (int i = started ? hooks_.layer : 0; i < c_.num_layers; ++i) {
      if (i == hooks_.layer && !started && !cache && hooks_.capture) hooks_.capture(input_ids, mask, x);
      const Layer& L = layers_[i];
      const Tensor& visible = c_.sliding_layer[i] ? windowed : allowed;
      Tensor h = norm(x, L.input_norm);
      x = x + (c_.arch.mla ? mla_attention(L, h, freqs, visible, cache, fresh_index, i) : attention(L, h, freqs, visible, cache, fresh_index, i));
      h = norm(x, L.post_norm);
      x = x + (L.moe ? moe(L, h, i) : L.dense(h, fused_));
    }
    if (fixed) {
      cache->cursor.add_(T);
      for (std::int64_t& n : cache->filled) n += T;
    } else if (cache) {
      cache->mask = torch::cat({past_mask, first_replicas(mask, R)}, 1).to(torch::kInt64);
    }
    x = norm(x, final_norm_);
    hidden_ = x;
    if (last_only) {
      Tensor index = torch::arange(T, torch::dtype(torch::kInt64).device(device_)).unsqueeze(0);
      Tensor last = torch::where(mask, index, torch::full_like(index, -1)).amax(1).clamp_min(0);
      x = x.index({torch::arange(B, last.options()), last}).unsqueeze(1);
    }
    Tensor logits = torch::matmul(x, lm_head_.t());
    return logits.scalar_type() == torch::kFloat64 ? logits : logits.to(torch::kFloat32);
  }

 private:
  // Rotation angles of each position. Dynamic NTK rescales the frequencies by each row's length (its
  // last position + 1, transformers takes the batch's), so a row's logits do not depend on its batch.
  Tensor rotary_angles(const Tensor& positions) const {
    Tensor inv_freq = c_.rope.type == "dynamic" ? dynamic_inv_freq(c_.rope, rotary_dim_, std::get<0>(positions.max(1)) + 1).unsqueeze(1)
                                                : inv_freq_;
    return positions.unsqueeze(-1).to(torch::kFloat32) * inv_freq;
  }

  // RMSNorm with this model's epsilon (a fused kernel where it may run).
  Tensor norm(const Tensor& x, const Tensor& weight) const {
    if (fused_ && kernels::available(x) && weight.scalar_type() == x.scalar_type()) return kernels::rms_norm(x, weight, c_.rms_eps);
    return rms_norm(x, weight, c_.rms_eps);
  }

  // One forward's rotation, shared by every layer: cos and sin [B, 1, T, R/2] in float32 (times the
  // attention factor), and for the half-rotation layout their doubled [B, 1, T, R] copies in the model's dtype.
  struct Rotary {
    Tensor angles;  // [B, T, R/2] float32, for the in-place kernel
    Tensor cos, sin, cos2, sin2;
  };

  Rotary rotary(const Tensor& positions) const {
    Tensor freqs = rotary_angles(positions);  // [B, T, R/2]
    Rotary r{freqs, freqs.cos().unsqueeze(1), freqs.sin().unsqueeze(1), {}, {}};
    if (c_.rope.attention_factor != 1.0) {
      r.cos = r.cos * c_.rope.attention_factor;
      r.sin = r.sin * c_.rope.attention_factor;
    }
    if (!c_.rope_interleaved) {
      r.cos2 = torch::cat({r.cos, r.cos}, -1).to(dtype_);
      r.sin2 = torch::cat({r.sin, r.sin}, -1).to(dtype_);
    }
    return r;
  }

  // q [B, T, Hq, R] and k [B, T, Hk, R] -> rotated [B, H, T, R] (in place by the kernel where it may run).
  void rotate(Tensor& q, Tensor& k, const Rotary& r) const {
    q = q.transpose(1, 2);
    k = k.transpose(1, 2);
    if (fused_ && kernels::available(q) && kernels::available(k)) {
      kernels::rope_(q, k, r.angles, c_.rope.attention_factor, c_.rope_interleaved);
      return;
    }
    q = rope(q, r);
    k = rope(k, r);
  }

  Tensor rope(const Tensor& x, const Rotary& r) const {  // x [B, H, T, R]
    if (c_.rope_interleaved) {
      Tensor xf = x.to(accumulate_type(x));
      Tensor re = xf.index({"...", Slice(0, torch::indexing::None, 2)}), im = xf.index({"...", Slice(1, torch::indexing::None, 2)});
      return torch::stack({re * r.cos - im * r.sin, re * r.sin + im * r.cos}, -1).flatten(-2).to(x.scalar_type());
    }
    return x * r.cos2 + rotate_half(x) * r.sin2;
  }

  // Which keys each query sees: allowed [B, 1, T, S] from the keys' mask [B, S] and the keys' and queries'
  // sequence indices; `windowed` the same within the sliding window (undefined without one).
  std::pair<Tensor, Tensor> visibility(const Tensor& key_mask, const Tensor& key_index, const Tensor& query_index) const {
    const Tensor query = query_index.unsqueeze(-1);  // [T, 1], or [B, T, 1] for per-row positions
    Tensor causal = key_index <= query;              // [T, S] or [B, T, S]
    Tensor allowed = ((causal & key_mask.unsqueeze(1)) | (key_index == query)).unsqueeze(-3);
    // Sliding layers: query i sees keys j > i - sliding_window (cache indices, as transformers' mask).
    Tensor windowed = c_.sliding_window > 0 ? allowed & (key_index > query - c_.sliding_window).unsqueeze(-3) : Tensor();
    return {allowed, windowed};
  }

  // A static cache's first forward allocates its mask and cursor (the layers' slots follow in attention);
  // every forward must fit in it.
  void prepare_static(KVCache& cache, int64_t rows, int64_t T) const {
    const std::string key = cache.capacity_key.empty() ? "KVCache::capacity" : cache.capacity_key;
    const int64_t held = cache.length();
    if (held + T > cache.capacity)
      throw std::runtime_error(fmt::format("the KV cache holds {} positions ({}); {} more after the {} cached would need {}", cache.capacity,
                                           key, T, held, held + T));
    if (!cache.mask.defined()) {
      cache.mask = torch::zeros({rows, cache.capacity}, torch::dtype(torch::kInt64).device(device_));
      cache.cursor = torch::zeros({rows}, torch::dtype(torch::kInt64).device(device_));
      cache.filled.assign(static_cast<std::size_t>(rows), 0);
    } else if (cache.mask.size(0) != rows) {
      throw std::runtime_error(fmt::format("forward: the static KV cache holds {} rows, this forward continues {}", cache.mask.size(0), rows));
    }
  }

  // Writes fresh [rows, heads, T, dim] into slot [rows, heads, capacity, dim] at each row's index [rows, T].
  static Tensor& write_slots(Tensor& slot, const Tensor& index, const Tensor& fresh) {
    return slot.scatter_(2, index.view({index.size(0), 1, index.size(1), 1}).expand(fresh.sizes()), fresh);
  }

  // A static cache's slot of one layer, allocated on first use: [rows, heads, capacity, dim] like `fresh`.
  static Tensor& static_slot(Tensor& slot, const Tensor& fresh, const KVCache& cache) {
    if (!slot.defined()) slot = torch::zeros({cache.mask.size(0), fresh.size(1), cache.capacity, fresh.size(3)}, fresh.options());
    return slot;
  }

  // Rows r % replicas == 0 of x [B, ...] -> [B / replicas, ...].
  static Tensor first_replicas(const Tensor& x, int64_t replicas) {
    if (replicas == 1) return x;
    std::vector<int64_t> shape = x.sizes().vec();
    shape[0] /= replicas;
    shape.insert(shape.begin() + 1, replicas);
    return x.view(shape).select(1, 0);
  }

  // Stores the clean rows' fresh keys (or latents); returns what this forward attends to: the whole
  // cached sequence when there are no replicas, else only the fresh part (the prefix is read in place).
  static Tensor append(Tensor& slot, const Tensor& fresh, int64_t replicas) {
    Tensor stored = first_replicas(fresh, replicas);
    slot = slot.defined() ? torch::cat({slot, stored}, 2) : (replicas > 1 ? stored.contiguous() : stored);
    return replicas > 1 ? fresh : slot;
  }

  static int64_t replicas_of(const KVCache* cache) { return cache ? cache->replicas : 1; }

  Tensor attend(const Tensor& q, Tensor k, Tensor v, const Tensor& allowed, double scale) const {
    k = expand_heads(k, q.size(1));
    v = expand_heads(v, q.size(1));
    if (compat::kHasSdpa && q.is_cuda()) return compat::sdpa(q, k, v, allowed, scale);  // fused kernel, no score matrix kept
    if (!allowed.defined()) throw std::logic_error("attend: an unmasked (causal) forward needs the fused CUDA kernel");
    Tensor scores = torch::matmul(q, k.transpose(-1, -2)).to(accumulate_type(q)) * scale;
    scores = scores.masked_fill(allowed.logical_not(), -std::numeric_limits<double>::infinity());
    Tensor probs = scores.softmax(-1).to(q.scalar_type());
    return torch::matmul(probs, v);  // [B, H, T, Dv]
  }

  static Tensor expand_heads(const Tensor& kv, int64_t heads) {
    int64_t groups = heads / kv.size(1);
    return groups > 1 ? kv.repeat_interleave(groups, 1) : kv;
  }

  // Attention of B = C * R query rows where each group of R rows shares cached row c's prefix (read
  // in place: the replicas are folded into the query length) and has its own fresh keys.
  Tensor attend_replicas(const Tensor& q, Tensor k_past, Tensor v_past, Tensor k_new, Tensor v_new, const Tensor& allowed,
                         int64_t R, double scale) const {
    const int64_t B = q.size(0), H = q.size(1), T = q.size(2), C = B / R, S = k_past.size(2);
    k_past = expand_heads(k_past, H);
    v_past = expand_heads(v_past, H);
    k_new = expand_heads(k_new, H);
    v_new = expand_heads(v_new, H);
    auto fold = [&](const Tensor& t) { return t.view({C, R, H, T, -1}).transpose(1, 2).reshape({C, H, R * T, -1}); };
    auto unfold = [&](const Tensor& t) { return t.view({C, H, R, T, -1}).transpose(1, 2).reshape({B, H, T, -1}); };
    Tensor scores = torch::cat({unfold(torch::matmul(fold(q), k_past.transpose(-1, -2))), torch::matmul(q, k_new.transpose(-1, -2))}, -1);
    scores = scores.to(accumulate_type(q)) * scale;
    scores = scores.masked_fill(allowed.logical_not(), -std::numeric_limits<double>::infinity());
    Tensor probs = scores.softmax(-1).to(q.scalar_type());
    return unfold(torch::matmul(fold(probs.narrow(-1, 0, S)), v_past)) + torch::matmul(probs.narrow(-1, S, T), v_new);
  }

  Tensor attention(const Layer& L, const Tensor& h, const Rotary& freqs, const Tensor& allowed, KVCache* cache, const Tensor& fresh_index,
                   int i) const {
    const int64_t B = h.size(0), T = h.size(1), D = c_.head_dim;
    auto project = [&](const Tensor& w, const Tensor& b) { return b.defined() ? torch::matmul(h, w.t()) + b : torch::matmul(h, w.t()); };
    Tensor q = project(L.q, L.q_bias), k = project(L.k, L.k_bias), v = project(L.v, L.v_bias);
    if (c_.arch.qk_norm == QkNorm::full_width) {
      q = norm(q, L.q_norm);
      k = norm(k, L.k_norm);
    }
    if (c_.clip_qkv > 0) {
      q = q.clamp(-c_.clip_qkv, c_.clip_qkv);
      k = k.clamp(-c_.clip_qkv, c_.clip_qkv);
      v = v.clamp(-c_.clip_qkv, c_.clip_qkv);
    }
    q = q.view({B, T, -1, D});
    k = k.view({B, T, -1, D});
    v = v.view({B, T, -1, D}).transpose(1, 2);
    if (c_.arch.qk_norm == QkNorm::per_head) {
      q = norm(q, L.q_norm);
      k = norm(k, L.k_norm);
    }
    rotate(q, k, freqs);
    const int64_t R = replicas_of(cache);
    Tensor k_past, v_past;
    if (cache && cache->capacity > 0) {  // static: write in place, attend over every slot (R > 1: the slots, then the fresh keys)
      k_past = write_slots(static_slot(cache->first[i], k, *cache), fresh_index, first_replicas(k, R));
      v_past = write_slots(static_slot(cache->second[i], v, *cache), fresh_index, first_replicas(v, R));
      if (R == 1) k = k_past, v = v_past;
    } else if (cache) {
      k_past = cache->first[i], v_past = cache->second[i];
      k = append(cache->first[i], k, R);
      v = append(cache->second[i], v, R);
    }
    const double scale = c_.softmax_scale / std::sqrt(static_cast<double>(D));
    Tensor out = R > 1 && k_past.defined() ? attend_replicas(q, k_past, v_past, k, v, allowed, R, scale) : attend(q, k, v, allowed, scale);
    out = torch::matmul(out.transpose(1, 2).reshape({B, T, -1}), L.o.t());
    return L.o_bias.defined() ? out + L.o_bias : out;
  }

  // DeepSeek multi-head latent attention; the cache holds the normalized latent and the rotary key.
  Tensor mla_attention(const Layer& L, const Tensor& h, const Rotary& freqs, const Tensor& allowed, KVCache* cache,
                       const Tensor& fresh_index, int i) const {
    const int64_t B = h.size(0), T = h.size(1), nope = c_.qk_nope_head_dim, rot = c_.qk_rope_head_dim, vd = c_.v_head_dim;
    Tensor q = c_.q_lora_rank > 0 ? torch::matmul(norm(torch::matmul(h, L.q_a.t()), L.q_a_norm), L.q_b.t())
                                  : torch::matmul(h, L.q.t());
    q = q.view({B, T, -1, nope + rot}).transpose(1, 2);
    Tensor q_nope = q.narrow(-1, 0, nope), q_rot = q.narrow(-1, nope, rot);
    Tensor compressed = torch::matmul(h, L.kv_a.t());
    Tensor latent = norm(compressed.narrow(-1, 0, c_.kv_lora_rank), L.kv_a_norm).unsqueeze(1);  // [B,1,T,r]
    Tensor k_rot = compressed.narrow(-1, c_.kv_lora_rank, rot).unsqueeze(1);                                   // [B,1,T,rot]
    if (fused_ && kernels::available(q_rot) && kernels::available(k_rot)) {
      kernels::rope_(q_rot, k_rot, freqs.angles, c_.rope.attention_factor, c_.rope_interleaved);
    } else {
      q_rot = rope(q_rot, freqs);
      k_rot = rope(k_rot, freqs);
    }
    const int64_t R = replicas_of(cache);
    Tensor latent_past, k_rot_past;
    if (cache && cache->capacity > 0) {  // static: as in attention()
      latent_past = write_slots(static_slot(cache->first[i], latent, *cache), fresh_index, first_replicas(latent, R));
      k_rot_past = write_slots(static_slot(cache->second[i], k_rot, *cache), fresh_index, first_replicas(k_rot, R));
      if (R == 1) latent = latent_past, k_rot = k_rot_past;
    } else if (cache) {
      latent_past = cache->first[i], k_rot_past = cache->second[i];
      latent = append(cache->first[i], latent, R);
      k_rot = append(cache->second[i], k_rot, R);
    }
    auto keys_values = [&](const Tensor& lat, const Tensor& rot_key) {  // [b,1,s,r], [b,1,s,rot] -> k, v [b, H, s, .]
      const int64_t b = lat.size(0), s = lat.size(2);
      Tensor kv = torch::matmul(lat.squeeze(1), L.kv_b.t()).view({b, s, -1, nope + vd}).transpose(1, 2);
      return std::make_pair(torch::cat({kv.narrow(-1, 0, nope), rot_key.expand({b, kv.size(1), s, rot})}, -1), kv.narrow(-1, nope, vd));
    };
    const double scale = c_.softmax_scale / std::sqrt(static_cast<double>(nope + rot));
    Tensor query = torch::cat({q_nope, q_rot}, -1), out;
    if (R > 1 && latent_past.defined()) {
      auto [k_past, v_past] = keys_values(latent_past, k_rot_past);
      auto [k_new, v_new] = keys_values(latent, k_rot);
      out = attend_replicas(query, k_past, v_past, k_new, v_new, allowed, R, scale);
    } else {
      auto [k, v] = keys_values(latent, k_rot);
      out = attend(query, k, v, allowed, scale);
    }
    return torch::matmul(out.transpose(1, 2).reshape({B, T, -1}), L.o.t());
  }

  Tensor moe(const Layer& L, const Tensor& h, int layer) {
    const auto shape = h.sizes().vec();
    Tensor x = h.reshape({-1, c_.hidden_size});
    Tensor logits = torch::matmul(x.to(L.router.scalar_type()), L.router.t());  // routers run in float32 (or float64)
    // A router transform perturbs the choice; the weights follow it unless they come from the clean logits.
    Tensor selection = transform_.selection ? transform_.selection(layer, logits) : logits;
    const RouterSpec& spec = L.routing;
    const bool plain = !transform_.selection && spec.scoring == Scoring::softmax && !spec.bias.defined() && spec.groups == 1;
    Routing r;
    if (fused_ && plain && kernels::route_available(logits, spec.top_k)) {
      kernels::TopK top = kernels::route_softmax_topk(logits, spec.top_k, spec.renormalize, spec.scale);
      r = {top.weights, top.ids};
    } else {
      r = route(transform_.weights_from_clean ? logits : selection, spec, selection);
    }
    routing_.push_back({layer, logits, r.ids, r.weights});
    if (observer_) observer_(layer, x, r.ids);

    Tensor out = dispatch(L, x, r.ids, r.weights.to(x.scalar_type()), layer);
    if (L.shared.gate.defined()) {
      Tensor s = L.shared(x, fused_);
      if (L.shared_gate.defined()) s = torch::sigmoid(torch::matmul(x, L.shared_gate.t())) * s;
      out = out + s;
    }
    return out.view(shape);
  }

  // Tokens grouped by expert (one sort), then either one grouped matmul per projection (CUDA bf16,
  // no host sync) or one matmul chain per expert that received tokens.
  Tensor dispatch(const Layer& L, const Tensor& x, const Tensor& ids, const Tensor& weights, int layer) const {
    if (ep_ranks_ > 1) return expert_parallel_dispatch(L, x, ids, weights, layer);
    const ExpertOrder order = expert_order(ids);
    const Tensor counts = torch::bincount(ids.reshape(-1), {}, c_.num_experts);
    if (grouped_mm_) {
      // Rows move to expert order and back by gathers (their gradients too, see permute.h); each token's
      // k outputs are combined by one [1, k] x [k, H] product accumulated in float32: no scatter-add.
      Tensor sorted_x = to_expert_order(x, order);
      Tensor ends = counts.cumsum(0).to(torch::kInt32);
      Tensor hidden = silu_mul(compat::grouped_mm(sorted_x, L.expert_gate, ends), compat::grouped_mm(sorted_x, L.expert_up, ends), fused_);
      Tensor y = compat::grouped_mm(hidden, L.expert_down, ends);  // [N * k, H] in expert order
      if (fused_ && kernels::available(y) && kernels::available(weights))
        return kernels::unpermute_combine(y, order.order, weights.to(torch::kFloat32));
      return torch::bmm(weights.unsqueeze(1), from_expert_order(y, order)).squeeze(1);
    }
    Tensor sorted_x = x.index_select(0, order.token_of);
    Tensor sorted_w = weights.reshape(-1).index_select(0, order.order).unsqueeze(1);
    Tensor out = torch::zeros_like(x);
    const Tensor host_counts = counts.cpu();  // the loop's sizes: the one host read of this path
    const auto* count = host_counts.data_ptr<int64_t>();
    int64_t start = 0;
    for (int64_t e = 0; e < c_.num_experts; ++e) {
      if (count[e] == 0) continue;
      Tensor xe = sorted_x.narrow(0, start, count[e]);
      Tensor ye = torch::matmul(silu_mul(torch::matmul(xe, L.expert_gate[e].t()), torch::matmul(xe, L.expert_up[e].t()), fused_),
                                L.expert_down[e].t());
      out.index_add_(0, order.token_of.narrow(0, start, count[e]), ye * sorted_w.narrow(0, start, count[e]));
      start += count[e];
    }
    return out;
  }

  // Expert parallelism: after one exchange of row counts, each token's k rows (and their expert ids) go to the
  // ranks holding their experts, each rank runs its experts on what it received, and the outputs come back to be combined
  // with the routing weights where the tokens live. Both exchanges are differentiable (distributed.h).
  Tensor expert_parallel_dispatch(const Layer& L, const Tensor& x, const Tensor& ids, const Tensor& weights, int layer) const {
    const ExpertOrder order = expert_order(ids);
    const Tensor slot_expert = ids.reshape(-1).index_select(0, order.order);  // [N * k], ascending
    const Tensor counts = torch::bincount(ids.reshape(-1), {}, c_.num_experts).cpu();
    const auto* count = counts.data_ptr<int64_t>();
    std::vector<int64_t> send(static_cast<std::size_t>(ep_ranks_), 0);
    for (int r = 0; r < ep_ranks_; ++r) {
      const auto [e0, e1] = distributed::shard_range(static_cast<std::size_t>(c_.num_experts), r, ep_ranks_);
      for (std::size_t e = e0; e < e1; ++e) send[static_cast<std::size_t>(r)] += count[e];
    }
    const std::string what = fmt::format("layer {}'s expert all-to-all", layer);
    const std::vector<int64_t> recv = distributed::all_to_all_counts(send, what);
    const Tensor got_x = distributed::all_to_all(x.index_select(0, order.token_of), send, recv, what);
    const Tensor got_local = distributed::all_to_all(slot_expert, send, recv, what + " (expert ids)") - first_expert_;
    // The received rows grouped by local expert (stable), run, and put back in received order.
    const Tensor by_expert = std::get<1>(torch::sort(got_local, /*stable=*/true, /*dim=*/0, /*descending=*/false));
    const Tensor rows = got_x.index_select(0, by_expert);
    const Tensor local_counts = torch::bincount(got_local, {}, local_experts_).cpu();
    const auto* local_count = local_counts.data_ptr<int64_t>();
    std::vector<Tensor> parts;
    int64_t start = 0;
    for (int64_t e = 0; e < local_experts_; ++e) {
      if (local_count[e] == 0) continue;
      Tensor xe = rows.narrow(0, start, local_count[e]);
      parts.push_back(torch::matmul(silu_mul(torch::matmul(xe, L.expert_gate[e].t()), torch::matmul(xe, L.expert_up[e].t()), fused_),
                                    L.expert_down[e].t()));
      start += local_count[e];
    }
    Tensor y = parts.empty() ? torch::zeros({0, c_.hidden_size}, x.options()) : torch::cat(parts);
    y = y.index_select(0, torch::argsort(by_expert));  // received order
    const Tensor back = distributed::all_to_all(y, recv, send, what + " (outputs)");  // [N * k, H] in expert order
    const Tensor sorted_w = weights.reshape(-1).index_select(0, order.order).unsqueeze(1);
    return torch::zeros_like(x).index_add(0, order.token_of, back * sorted_w);
  }

  void load(const std::filesystem::path& folder) {
    Checkpoint ckpt(folder);
    check_checkpoint(c_, ckpt, folder);  // every tensor taken below is present with its shape
    // Always a copy (copy = true), never a view of the mapped file: a file overwritten or cut short
    // while the run goes on must not change the running model or kill it with SIGBUS.
    long long total_bytes = 0;
    for (const std::string& name : ckpt.names()) {
      const SafetensorsFile& file = ckpt.file_of(name);
      long long n = c10::elementSize(file.dtype(name));
      for (int64_t d : file.shape(name)) n *= d;
      total_bytes += n;
    }
    Progress progress = Progress::bytes("loading " + folder.filename().string(), total_bytes);
    auto take = [&](const std::string& name, std::optional<torch::ScalarType> dtype = std::nullopt) {
      Tensor mapped = ckpt.get(name);
      Tensor t = mapped.to(device_, dtype.value_or(dtype_), /*non_blocking=*/false, /*copy=*/true).contiguous();
      progress.advance_steps(static_cast<long long>(mapped.nbytes()), 0, name);
      named_.emplace_back(name, t);
      return t;
    };
    embed_ = take("model.embed_tokens.weight");
    final_norm_ = take("model.norm.weight");
    lm_head_ = c_.tie_embeddings ? embed_ : take("lm_head.weight");
    const Architecture& a = c_.arch;
    for (int64_t i = 0; i < c_.num_layers; ++i) {
      std::string p = fmt::format("model.layers.{}.", i);
      Layer L;
      L.input_norm = take(p + "input_layernorm.weight");
      L.post_norm = take(p + "post_attention_layernorm.weight");
      std::string at = p + "self_attn.";
      if (a.mla) {
        if (c_.q_lora_rank > 0) {
          L.q_a = take(at + "q_a_proj.weight");
          L.q_a_norm = take(at + "q_a_layernorm.weight");
          L.q_b = take(at + "q_b_proj.weight");
        } else {
          L.q = take(at + "q_proj.weight");
        }
        L.kv_a = take(at + "kv_a_proj_with_mqa.weight");
        L.kv_a_norm = take(at + "kv_a_layernorm.weight");
        L.kv_b = take(at + "kv_b_proj.weight");
      } else {
        L.q = take(at + "q_proj.weight");
        L.k = take(at + "k_proj.weight");
        L.v = take(at + "v_proj.weight");
        if (c_.qkv_bias) {
          L.q_bias = take(at + "q_proj.bias");
          L.k_bias = take(at + "k_proj.bias");
          L.v_bias = take(at + "v_proj.bias");
        }
        if (c_.o_bias) L.o_bias = take(at + "o_proj.bias");
        if (a.qk_norm != QkNorm::none) {
          L.q_norm = take(at + "q_norm.weight");
          L.k_norm = take(at + "k_norm.weight");
        }
      }
      L.o = take(at + "o_proj.weight");
      L.moe = c_.moe_layer[i];
      if (!L.moe) {
        L.dense = {take(p + "mlp.gate_proj.weight"), take(p + "mlp.up_proj.weight"), take(p + "mlp.down_proj.weight")};
      } else {
        std::string m = p + a.moe_module + ".";
        const torch::ScalarType router_dtype = dtype_ == torch::kFloat64 ? torch::kFloat64 : torch::kFloat32;
        L.router = take(m + a.router + ".weight", router_dtype);
        L.routing = c_.router;
        if (!a.router_bias.empty()) L.routing.bias = take(m + a.router + "." + a.router_bias, router_dtype);
        std::vector<Tensor> g, u, d;
        for (int64_t e = first_expert_; e < first_expert_ + local_experts_; ++e) {  // this rank's share (all without placement)
          std::string ep = fmt::format("{}experts.{}.", m, e);
          g.push_back(take(ep + a.expert_names[0] + ".weight"));
          u.push_back(take(ep + a.expert_names[1] + ".weight"));
          d.push_back(take(ep + a.expert_names[2] + ".weight"));
        }
        // Stacked copies for dispatch; the per-expert tensors in named_ become views of them.
        L.expert_gate = torch::stack(g);
        L.expert_up = torch::stack(u);
        L.expert_down = torch::stack(d);
        rebind_experts(m, a, L);
        if (!a.shared_expert.empty() && c_.shared_intermediate_size > 0) {
          std::string s = m + a.shared_expert + ".";
          L.shared = {take(s + "gate_proj.weight"), take(s + "up_proj.weight"), take(s + "down_proj.weight")};
          if (!a.shared_expert_gate.empty()) L.shared_gate = take(m + a.shared_expert_gate + ".weight");
        }
      }
      layers_.push_back(std::move(L));
    }
    progress.advance_steps(0);  // the final line without the last tensor's name
    progress.finish();
  }

  void rebind_experts(const std::string& m, const Architecture& a, const Layer& L) {
    for (auto& [name, t] : named_) {
      if (name.rfind(m + "experts.", 0) != 0) continue;
      std::string rest = name.substr(m.size() + 8);
      int64_t e = std::stoll(rest.substr(0, rest.find('.'))) - first_expert_;
      std::string proj = rest.substr(rest.find('.') + 1);
      if (proj == a.expert_names[0] + ".weight") t = L.expert_gate[e];
      else if (proj == a.expert_names[1] + ".weight") t = L.expert_up[e];
      else if (proj == a.expert_names[2] + ".weight") t = L.expert_down[e];
    }
  }

  ModelConfig c_;
  ModelInfo info_;
  torch::Device device_;
  torch::ScalarType dtype_;
  bool fused_ = true;
  bool grouped_mm_ = false;
  int ep_rank_ = 0, ep_ranks_ = 1;              // expert parallelism (ForwardPaths)
  int64_t first_expert_ = 0, local_experts_ = 0;  // this rank's routed experts
  int64_t rotary_dim_ = 0;
  Tensor embed_, final_norm_, lm_head_, inv_freq_, hidden_;
  std::vector<Layer> layers_;
  NamedTensors named_;
  std::vector<RouterTrace> routing_;
  RouterTransform transform_;
  MoeInputObserver observer_;
  LayerInputHooks hooks_;
};

}  // namespace

std::unique_ptr<Model> load_model(const std::filesystem::path& folder, torch::Device device, torch::ScalarType dtype, ForwardPaths paths) {
  ModelConfig config = read_model_config(folder);
  auto model = std::make_unique<MoeModel>(std::move(config), folder, device, dtype, paths);
  log::info("model {} ({}, {} layers, {} experts, top-{}) on {} in {}; MoE dispatch: {}; fused kernels: {}", folder.string(),
            model->info().model_type, model->info().num_layers, model->info().num_experts, model->info().top_k, device.str(),
            c10::toString(dtype),
            paths.expert_ranks > 1 ? fmt::format("expert parallel over {} ranks (this one holds {} of {} experts per layer; tokens "
                                                 "exchanged by all-to-all)",
                                                 paths.expert_ranks, model->local_experts(), model->info().num_experts)
            : model->uses_grouped_mm() ? "at::_grouped_mm over tokens grouped by expert"
                                     : "per-expert loop over tokens grouped by expert (grouped_mm needs CUDA, bf16, LibTorch >= 2.8)",
            model->uses_fused_kernels() ? "on (RMSNorm, RoPE, SiLU*up, softmax top-k router, combine; forward only)"
                                        : paths.fused_kernels ? "off (not built, or not on a GPU)" : "off ([model] fused_kernels = false)");
  return model;
}

}  // namespace moelab
