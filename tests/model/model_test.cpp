// The model core against transformers' outputs (fixtures from tests/fixtures/models/make_fixtures.py):
// fp32 logits within 1e-4, the same router top-k sets, the same greedy tokens; padding and KV cache.
#include "moe_model.h"
#include "moelab/lib/files.h"
#include "moelab/lib/quant.h"
#include "moelab/lib/quantized_checkpoint.h"
#include "moelab/lib/safetensors.h"
#include "moelab/tokenizer.h"
#include "test_run.h"

#include <fmt/format.h>
#include <gmock/gmock.h>
#include <nlohmann/json.hpp>

#include <cmath>
#include <map>

namespace {

namespace fs = std::filesystem;
using torch::Tensor;

const fs::path kFixtures = fs::path(MOELAB_SOURCE_DIR) / "tests" / "fixtures" / "models";

std::unique_ptr<moelab::Model> load(const std::string& name) {
  return moelab::load_model(kFixtures / name, torch::kCPU, torch::kFloat32);
}

// The expert sets transformers' routers pick from the recorded logits: softmax top-k, DeepSeek-V2 first
// keeping the `topk_group` groups with the best expert, DeepSeek-V3 choosing on sigmoid + bias and keeping
// the groups whose best two biased scores sum highest.
Tensor reference_topk(const Tensor& logits, const moelab::ModelConfig& config, const Tensor& bias) {
  const moelab::RouterSpec& r = config.router;
  const bool v3 = r.scoring == moelab::Scoring::sigmoid;
  Tensor choice = v3 ? logits.sigmoid() + bias : logits.softmax(-1);
  if (r.groups > 1) {
    Tensor grouped = choice.view({choice.size(0), r.groups, -1});
    Tensor group_scores = v3 ? std::get<0>(grouped.topk(2, -1)).sum(-1) : std::get<0>(grouped.max(-1));
    Tensor keep = torch::zeros_like(group_scores).scatter_(1, std::get<1>(group_scores.topk(r.groups_kept, -1)), 1.0);
    choice = choice.masked_fill(keep.repeat_interleave(config.num_experts / r.groups, 1).logical_not(),
                                v3 ? -std::numeric_limits<double>::infinity() : 0.0);
  }
  return std::get<0>(std::get<1>(choice.topk(r.top_k, -1)).sort(-1));
}

// Cached greedy decoding picks transformers' greedy_ids. A step where the picks differ must be a tie (the
// reference token's logit within 1e-4 of the best: deepseek_v2_yarn has one at its fifth step); the reference
// token is fed on, so later steps are still checked.
void expect_greedy_ids(moelab::Model& model, const Tensor& prompt, const Tensor& greedy_ids) {
  moelab::KVCache cache;
  Tensor logits = model.forward(prompt, {}, &cache);
  for (int64_t s = 0; s < greedy_ids.size(1); ++s) {
    Tensor last = logits[0][logits.size(1) - 1];
    const int64_t reference = greedy_ids[0][s].item<int64_t>();
    if (last.argmax().item<int64_t>() != reference)
      EXPECT_LE((last.max() - last[reference]).item<double>(), 1e-4) << "step " << s << " picks " << last.argmax().item<int64_t>()
                                                                     << ", transformers " << reference;
    logits = model.forward(greedy_ids.narrow(1, s, 1), {}, &cache);
  }
}

class Fixture : public testing::TestWithParam<std::string> {};

TEST_P(Fixture, MatchesTransformers) {
  auto model = load(GetParam());
  moelab::SafetensorsFile expected(kFixtures / GetParam() / "expected.safetensors");
  auto config = moelab::read_model_config(kFixtures / GetParam());
  Tensor logits = model->forward(expected.get("input_ids"), {});
  EXPECT_LE((logits - expected.get("logits")).abs().max().item<double>(), 1e-4);

  ASSERT_EQ(model->routing().size(), model->info().moe_layers.size());
  moelab::SafetensorsFile weights(kFixtures / GetParam() / "model.safetensors");
  for (const auto& trace : model->routing()) {
    Tensor ref = expected.get("router_logits." + std::to_string(trace.layer));
    EXPECT_LE((trace.logits - ref).abs().max().item<double>(), 1e-4) << "layer " << trace.layer;
    Tensor ours = std::get<0>(trace.topk_ids.sort(-1));
    const std::string bias_name = fmt::format("model.layers.{}.mlp.gate.e_score_correction_bias", trace.layer);
    Tensor bias = weights.contains(bias_name) ? weights.get(bias_name) : torch::zeros({config.num_experts});
    EXPECT_TRUE(torch::equal(ours, reference_topk(ref, config, bias))) << "layer " << trace.layer;
    if (weights.contains(bias_name))  // the fixture's bias matters: without it some token would choose otherwise
      EXPECT_FALSE(torch::equal(ours, reference_topk(ref, config, torch::zeros_like(bias)))) << "layer " << trace.layer;
  }
  expect_greedy_ids(*model, expected.get("prompt_ids"), expected.get("greedy_ids"));
}

// The fixtures with real checkpoints' options: YaRN (DeepSeek-V2's mscale/mscale_all_dim form, Qwen3's
// form), linear, dynamic NTK (12 tokens past max_position_embeddings 8) and llama3 RoPE; sliding windows
// of 4 keys (every layer in Mixtral, layer_types' sliding layers in Qwen2-MoE); attention biases.
const std::vector<std::string> kOptionFixtures = {"deepseek_v2_yarn", "qwen3_moe_yarn", "mixtral_linear_sliding", "olmoe_dynamic_bias",
                                       "qwen2_moe_llama3_sliding"};

INSTANTIATE_TEST_SUITE_P(Architectures, Fixture,
                         testing::Values("olmoe", "olmoe_clip_norm", "mixtral", "qwen2_moe", "qwen3_moe", "deepseek_v2", "deepseek_v3"));
INSTANTIATE_TEST_SUITE_P(ConfigOptions, Fixture, testing::ValuesIn(kOptionFixtures));

class PerArchitecture : public testing::TestWithParam<std::string> {};

TEST_P(PerArchitecture, PaddedRowsGiveTheLogitsOfUnpaddedRows) {
  auto model = load(GetParam());
  Tensor ids = torch::randint(2, 256, {1, 7}, torch::kInt64);
  Tensor alone = model->forward(ids, {});
  const long long pad = 3;
  Tensor pads = torch::full({1, pad}, 1, torch::kInt64);
  // Left padding.
  Tensor left = model->forward(torch::cat({pads, ids}, 1), torch::cat({torch::zeros({1, pad}), torch::ones({1, 7})}, 1));
  EXPECT_LE((left.narrow(1, pad, 7) - alone).abs().max().item<double>(), 1e-4);
  // Right padding, in a batch with an unpadded longer row.
  Tensor longer = torch::randint(2, 256, {1, 10}, torch::kInt64);
  Tensor batch = torch::cat({torch::cat({ids, pads}, 1), longer}, 0);
  Tensor mask = torch::cat({torch::cat({torch::ones({1, 7}), torch::zeros({1, pad})}, 1), torch::ones({1, 10})}, 0);
  Tensor right = model->forward(batch, mask);
  EXPECT_LE((right[0].narrow(0, 0, 7) - alone[0]).abs().max().item<double>(), 1e-4);
  EXPECT_LE((right[1] - model->forward(longer, {})[0]).abs().max().item<double>(), 1e-4);
  // last_only: each row's last real token, whichever side the padding is on.
  Tensor last = model->forward(batch, mask, nullptr, /*last_only=*/true);
  ASSERT_EQ(last.size(1), 1);
  EXPECT_LE((last[0][0] - alone[0][6]).abs().max().item<double>(), 1e-4);
  EXPECT_LE((last[1][0] - right[1][9]).abs().max().item<double>(), 1e-4);
}

TEST_P(PerArchitecture, CachedDecodingMatchesFullForward) {
  if (moelab::read_model_config(kFixtures / GetParam()).rope.type == "dynamic")
    GTEST_SKIP() << "dynamic NTK rotates every position of a 9-token forward by the 9-token frequencies, cached keys keep "
                    "theirs (as in transformers); greedy_ids in MatchesTransformers checks its cached decoding";
  auto model = load(GetParam());
  Tensor ids = torch::randint(2, 256, {2, 9}, torch::kInt64);
  Tensor mask = torch::ones({2, 9});
  mask[0][0] = 0;  // a left-padded row
  Tensor full = model->forward(ids, mask);
  moelab::KVCache cache;
  std::vector<Tensor> pieces = {model->forward(ids.narrow(1, 0, 5), mask.narrow(1, 0, 5), &cache)};
  for (long long t = 5; t < 9; ++t) pieces.push_back(model->forward(ids.narrow(1, t, 1), mask.narrow(1, t, 1), &cache));
  EXPECT_EQ(cache.length(), 9);
  EXPECT_LE((torch::cat(pieces, 1) - full).narrow(1, 1, 8).abs().max().item<double>(), 1e-4);
}

// The static cache (preallocated slots written in place at a device index) decodes as the growing one:
// a left-padded prompt, single-token steps, RoE's replica forward (K noisy rows reading the clean row's
// prefix) and its truncation, with the same logits; a forward that would overflow it names the key.
TEST_P(PerArchitecture, StaticCacheMatchesGrowingCache) {
  auto model = load(GetParam());
  torch::NoGradGuard no_grad;
  Tensor ids = torch::randint(2, 256, {2, 9}, torch::kInt64);
  Tensor mask = torch::ones({2, 5}, torch::kInt64);
  mask[0][0] = 0;  // a left-padded row
  moelab::KVCache growing, fixed;
  fixed.capacity = 12;
  fixed.capacity_key = "generate.max_new_tokens";
  auto both = [&](const Tensor& tokens, const Tensor& m, bool last_only = false) {
    Tensor a = model->forward(tokens, m, &growing, last_only), b = model->forward(tokens, m, &fixed, last_only);
    EXPECT_LE((a - b).abs().max().item<double>(), 1e-5) << "after " << growing.length() << " positions";
  };
  both(ids.narrow(1, 0, 5), mask);
  for (long long t = 5; t < 7; ++t) both(ids.narrow(1, t, 1), {});
  // RoE: 3 replicas of each row (row 0 of each group clean), then drop that forward and append the clean token.
  growing.replicas = fixed.replicas = 3;
  both(ids.narrow(1, 7, 1).repeat_interleave(3, 0), {}, true);
  growing.replicas = fixed.replicas = 1;
  growing.drop_newest(1);
  fixed.drop_newest(1);
  EXPECT_EQ(fixed.length(), 7);
  both(ids.narrow(1, 7, 2), {});
  EXPECT_EQ(fixed.length(), 9);
  EXPECT_EQ(growing.length(), 9);
  EXPECT_EQ(fixed.first.at(0).size(2), 12);  // allocated once, never grown
  EXPECT_TRUE(fixed.cursor.eq(9).all().item<bool>());
  // kv_cache_bytes_per_position (the memory check before generation) is what the static cache allocated.
  int64_t allocated = fixed.mask.nbytes();
  for (const auto* slots : {&fixed.first, &fixed.second})
    for (const Tensor& slot : *slots) allocated += slot.defined() ? static_cast<int64_t>(slot.nbytes()) : 0;
  EXPECT_EQ(allocated, 2 * 12 * model->kv_cache_bytes_per_position());
  try {
    model->forward(ids.narrow(1, 0, 4), {}, &fixed);
    FAIL() << "overflowing a static cache must throw";
  } catch (const std::runtime_error& e) {
    EXPECT_THAT(e.what(), testing::HasSubstr("holds 12 positions (generate.max_new_tokens)"));
    EXPECT_THAT(e.what(), testing::HasSubstr("would need 13"));
  }
  EXPECT_EQ(fixed.length(), 9);  // refused before any write
}

// Continuous batching: a static cache's row takes a new prompt's prefill from another cache and decodes
// on as if that prompt had been decoded alone, while the other row decodes on unchanged.
TEST_P(PerArchitecture, StaticCacheRowTakesAnotherPromptsPrefill) {
  auto model = load(GetParam());
  torch::NoGradGuard no_grad;
  Tensor ids = torch::randint(2, 256, {2, 6}, torch::kInt64), newcomer = torch::randint(2, 256, {1, 4}, torch::kInt64);
  Tensor steps = torch::randint(2, 256, {2, 3}, torch::kInt64);
  moelab::KVCache batch, alone_first, alone_new, prefill;
  batch.capacity = alone_first.capacity = alone_new.capacity = 10;
  model->forward(ids, {}, &batch);
  model->forward(ids.narrow(0, 0, 1), {}, &alone_first);
  model->forward(newcomer, {}, &prefill);  // a growing cache: its row is copied into the static one
  model->forward(newcomer, {}, &alone_new);
  batch.replace_row(1, prefill, 0);
  EXPECT_EQ(batch.filled, (std::vector<std::int64_t>{6, 4}));
  for (long long t = 0; t < 3; ++t) {
    Tensor both = model->forward(steps.narrow(1, t, 1), {}, &batch);
    Tensor first = model->forward(steps.narrow(1, t, 1).narrow(0, 0, 1), {}, &alone_first);
    Tensor second = model->forward(steps.narrow(1, t, 1).narrow(0, 1, 1), {}, &alone_new);
    EXPECT_LE((both[0] - first[0]).abs().max().item<double>(), 1e-5) << "step " << t;
    EXPECT_LE((both[1] - second[0]).abs().max().item<double>(), 1e-5) << "step " << t;
  }
  EXPECT_EQ(batch.filled, (std::vector<std::int64_t>{9, 7}));
}

// What quantization relies on, per architecture: the MoE input observer sees every MoE layer's input and
// choices; expert_weights shares storage with the named checkpoint tensors; GPTQ-quantized experts saved
// as a quantized checkpoint rebuild the same model from the full-precision one.
TEST_P(PerArchitecture, ExpertWeightsObserverAndQuantizedCheckpoint) {
  auto model = load(GetParam());
  const auto& info = model->info();
  Tensor ids = torch::randint(2, 256, {2, 6}, torch::kInt64);
  std::vector<int> seen;
  std::map<int, Tensor> inputs;
  model->set_moe_input_observer([&](int layer, const Tensor& x, const Tensor& chosen) {
    seen.push_back(layer);
    inputs[layer] = x.detach().clone();
    EXPECT_EQ(x.sizes(), (std::vector<int64_t>{12, info.hidden_size}));
    EXPECT_EQ(chosen.sizes(), (std::vector<int64_t>{12, info.top_k}));
  });
  torch::NoGradGuard no_grad;
  model->forward(ids, {});
  model->set_moe_input_observer({});
  EXPECT_EQ(seen, info.moe_layers);

  std::map<std::string, Tensor> named;
  for (auto& [name, t] : model->named_weights()) named[name] = t;
  moelab::QuantizedCheckpoint checkpoint;
  const moelab::QuantSpec spec{moelab::QuantFormat::int4, 128};
  for (int layer : info.moe_layers) {
    moelab::ExpertWeights ex = model->expert_weights(layer);
    Tensor* stacks[3] = {&ex.gate, &ex.up, &ex.down};
    for (int p = 0; p < 3; ++p) {
      const int64_t experts = stacks[p]->size(0), cols = stacks[p]->size(2);
      Tensor h = p < 2 ? 2 * inputs[layer].t().matmul(inputs[layer]) / 12 + 1e-3 * torch::eye(cols) : torch::eye(cols);
      moelab::GptqResult r = moelab::gptq_quantize(*stacks[p], h.expand({experts, cols, cols}), spec, {});
      stacks[p]->copy_(r.q);
      for (int64_t e = 0; e < experts; ++e) {
        const std::string name = fmt::format("{}{}.{}.weight", ex.prefix, e, ex.names[p]);
        ASSERT_TRUE(named.count(name)) << name;
        EXPECT_TRUE(torch::equal(named[name], r.q[e])) << name;  // the named tensor is a view of the stack
        checkpoint.matrices.push_back({name, moelab::pack(r.q[e], {r.grids.scale[e], r.grids.zero[e]}, spec)});
      }
    }
  }
  moelab::test::TempDir dir;
  moelab::save_quantized_checkpoint(dir.path() / "q.safetensors", *model, checkpoint);
  auto rebuilt = load(GetParam());
  moelab::apply_quantized_checkpoint(dir.path() / "q.safetensors", *rebuilt);
  EXPECT_TRUE(torch::equal(rebuilt->forward(ids, {}), model->forward(ids, {})));
}

INSTANTIATE_TEST_SUITE_P(Architectures, PerArchitecture, testing::Values("olmoe", "mixtral", "qwen2_moe", "qwen3_moe", "deepseek_v2",
                                                                                    "deepseek_v3"));
INSTANTIATE_TEST_SUITE_P(ConfigOptions, PerArchitecture, testing::ValuesIn(kOptionFixtures));

// A copy of fixture `name` whose config.json has `changes` applied (null erases a key).
fs::path fixture_with(const moelab::test::TempDir& dir, const std::string& name, const nlohmann::json& changes) {
  nlohmann::json config = nlohmann::json::parse(moelab::read_file(kFixtures / name / "config.json"));
  for (const auto& [key, value] : changes.items()) {
    if (value.is_null()) config.erase(key);
    else config[key] = value;
  }
  dir.write("config.json", config.dump(1));
  if (!fs::exists(dir.path() / "model.safetensors")) fs::copy_file(kFixtures / name / "model.safetensors", dir.path() / "model.safetensors");
  return dir.path();
}

// Hub configs spell the rope table rope_scaling with "type" and keep rope_theta at the top level (as
// DeepSeek-V2's do); the same checkpoint gives the same logits.
TEST(Rope, HubStyleRopeScalingGivesTheSameLogits) {
  for (const std::string& name : kOptionFixtures) {
    moelab::test::TempDir dir;
    nlohmann::json config = nlohmann::json::parse(moelab::read_file(kFixtures / name / "config.json"));
    nlohmann::json scaling = config["rope_parameters"];
    const double theta = scaling["rope_theta"].get<double>();
    scaling["type"] = scaling["rope_type"];
    scaling.erase("rope_type");
    scaling.erase("rope_theta");
    auto model = moelab::load_model(fixture_with(dir, name, {{"rope_parameters", nullptr}, {"rope_scaling", scaling}, {"rope_theta", theta}}),
                                    torch::kCPU, torch::kFloat32);
    moelab::SafetensorsFile expected(kFixtures / name / "expected.safetensors");
    EXPECT_LE((model->forward(expected.get("input_ids"), {}) - expected.get("logits")).abs().max().item<double>(), 1e-4) << name;
  }
}

TEST(Rope, ReadsEachTypesParametersAndRefusesTheRestByName) {
  moelab::ModelConfig v2 = moelab::read_model_config(kFixtures / "deepseek_v2_yarn");
  EXPECT_EQ(v2.rope.type, "yarn");
  EXPECT_DOUBLE_EQ(v2.rope.attention_factor, 1.0);  // mscale / mscale_all_dim, both 0.707
  EXPECT_DOUBLE_EQ(v2.softmax_scale, std::pow(0.1 * 0.707 * std::log(4.0) + 1, 2));
  moelab::ModelConfig qwen3 = moelab::read_model_config(kFixtures / "qwen3_moe_yarn");
  EXPECT_DOUBLE_EQ(qwen3.rope.attention_factor, 0.1 * std::log(4.0) + 1);
  EXPECT_DOUBLE_EQ(qwen3.softmax_scale, 1.0);
  EXPECT_EQ(moelab::read_model_config(kFixtures / "olmoe_dynamic_bias").rope.max_positions, 8);
  moelab::test::TempDir dir;
  auto error = [&](const nlohmann::json& rope) {
    return moelab::test::error_of([&] { moelab::read_model_config(fixture_with(dir, "qwen3_moe_yarn", {{"rope_parameters", rope}})); });
  };
  EXPECT_THAT(error({{"rope_type", "longrope"}, {"factor", 2.0}}),
              testing::HasSubstr("config.json rope_parameters: rope_type \"longrope\" is not supported"));
  EXPECT_THAT(error({{"rope_type", "linear"}, {"factor", 2.0}, {"beta_fast", 8}}),
              testing::HasSubstr("key \"beta_fast\" is not read by rope_type \"linear\""));
  EXPECT_THAT(error({{"rope_type", "default"}, {"partial_rotary_factor", 0.5}}),
              testing::HasSubstr("partial_rotary_factor other than 1 is not supported"));
}

// The math-changing keys each architecture's readers ask about (a reader that stops asking fails here),
// and for every fixture: all its keys are read or math-free, and a key nothing reads for that
// architecture is refused with the file and the key named.
TEST(ConfigKeyAudit, EveryKeyIsReadOrMathFreeAndUnreadKeysAreRefused) {
  const std::vector<std::string> common = {"rope_parameters", "rope_scaling", "rope_theta", "max_position_embeddings", "hidden_act",
                                           "attention_dropout", "head_dim", "num_key_value_heads", "tie_word_embeddings", "rms_norm_eps",
                                           "moe_intermediate_size", "quantization_config"};
  const std::map<std::string, std::vector<std::string>> reads = {
      {"olmoe", {"attention_bias", "clip_qkv", "norm_topk_prob"}},
      {"mixtral", {"sliding_window", "router_jitter_noise"}},
      {"qwen2_moe", {"qkv_bias", "use_sliding_window", "sliding_window", "max_window_layers", "layer_types", "decoder_sparse_step",
                     "mlp_only_layers", "norm_topk_prob", "shared_expert_intermediate_size"}},
      {"qwen3_moe", {"attention_bias", "use_sliding_window", "sliding_window", "max_window_layers", "decoder_sparse_step",
                     "mlp_only_layers", "norm_topk_prob"}},
      {"deepseek_v2", {"attention_bias", "mlp_bias", "q_lora_rank", "kv_lora_rank", "qk_nope_head_dim", "qk_rope_head_dim", "qk_head_dim",
                       "v_head_dim", "n_shared_experts", "first_k_dense_replace", "moe_layer_freq", "scoring_func", "topk_method",
                       "n_group", "topk_group", "routed_scaling_factor", "norm_topk_prob"}},
      {"deepseek_v3", {"attention_bias", "mlp_bias", "q_lora_rank", "kv_lora_rank", "qk_nope_head_dim", "qk_rope_head_dim", "qk_head_dim",
                       "v_head_dim", "n_shared_experts", "first_k_dense_replace", "moe_layer_freq", "scoring_func", "topk_method",
                       "n_group", "topk_group", "routed_scaling_factor", "norm_topk_prob", "rope_interleave"}},
  };
  const std::map<std::string, std::string> unread = {{"olmoe", "sliding_window"},       {"mixtral", "attention_bias"},
                                                     {"qwen2_moe", "attention_bias"},   {"qwen3_moe", "layer_types"},
                                                     {"deepseek_v2", "rope_interleave"}, {"deepseek_v3", "sliding_window"}};
  for (const char* name : {"olmoe", "olmoe_clip_norm", "mixtral", "qwen2_moe", "qwen3_moe", "deepseek_v2", "deepseek_v3",
                           "deepseek_v2_yarn", "qwen3_moe_yarn", "mixtral_linear_sliding", "olmoe_dynamic_bias", "qwen2_moe_llama3_sliding"}) {
    moelab::ModelConfig config = moelab::read_model_config(kFixtures / name);
    const std::string& type = config.arch.model_type;
    for (const auto& keys : {common, reads.at(type)})
      for (const std::string& key : keys) EXPECT_TRUE(config.keys_read.count(key)) << name << " does not read " << key;
    moelab::test::TempDir dir;
    const std::string key = unread.at(type);
    std::string error = moelab::test::error_of([&] { moelab::read_model_config(fixture_with(dir, name, {{key, true}})); });
    EXPECT_THAT(error, testing::HasSubstr((dir.path() / "config.json").string() + ": key \"" + key + "\" is not read for " + type)) << name;
    error = moelab::test::error_of([&] { moelab::read_model_config(fixture_with(dir, name, {{"partial_rotary_factor", 0.5}})); });
    EXPECT_THAT(error, testing::HasSubstr("key \"partial_rotary_factor\" is not read for " + type)) << name;
  }
}

TEST(Model, RouterWeightsAreFloat32AndTrainable) {
  auto model = load("olmoe");
  Tensor w = model->router_weight(2);
  EXPECT_EQ(w.scalar_type(), torch::kFloat32);
  EXPECT_EQ(w.sizes(), (std::vector<int64_t>{8, 64}));
  w.requires_grad_(true);
  Tensor logits = model->forward(torch::tensor({{5, 6, 7}}, torch::kInt64), {});
  logits.sum().backward();
  ASSERT_TRUE(w.grad().defined());
  EXPECT_GT(w.grad().abs().sum().item<double>(), 0.0);
  EXPECT_THAT(moelab::test::error_of([&] { load("qwen2_moe")->router_weight(1); }), testing::HasSubstr("not a MoE layer; MoE layers: 0, 2"));
}

TEST(Model, RouterTransformChangesSelectionButNotRecordedLogits) {
  auto model = load("olmoe");
  Tensor ids = torch::tensor({{5, 6, 7, 8}}, torch::kInt64);
  model->forward(ids, {});
  Tensor clean = model->routing()[0].logits.clone();
  // Force expert 7 and 6 to the top in layer 0 only.
  moelab::RouterTransform boost{[](int layer, const Tensor& logits) {
    if (layer != 0) return logits;
    Tensor boosted = logits.clone();
    boosted.select(1, 7) += 100;
    boosted.select(1, 6) += 50;
    return boosted;
  }};
  model->set_router_transform(boost);
  model->forward(ids, {});
  EXPECT_TRUE(torch::allclose(model->routing()[0].logits, clean));
  EXPECT_TRUE(model->routing()[0].topk_ids.select(1, 0).eq(7).all().item<bool>());
  EXPECT_TRUE(model->routing()[0].topk_ids.select(1, 1).eq(6).all().item<bool>());
  EXPECT_GT(model->routing()[0].topk_weights.select(1, 0).min().item<double>(), 0.99);  // weights from the boosted logits
  // Weights from the clean logits: the clean softmax at the forced experts.
  boost.weights_from_clean = true;
  model->set_router_transform(boost);
  model->forward(ids, {});
  Tensor clean_probs = clean.softmax(-1);
  EXPECT_TRUE(torch::allclose(model->routing()[0].topk_weights, clean_probs.index_select(1, torch::tensor({7, 6}))));
}

// DeepSeek-V3's e_score_correction_bias: a float32 named weight, not trained, that moves the choice only.
TEST(Model, DeepseekV3CorrectionBiasMovesTheChoiceNotTheWeights) {
  auto model = load("deepseek_v3");
  Tensor bias;
  for (auto& [name, t] : model->named_weights())
    if (name == "model.layers.1.mlp.gate.e_score_correction_bias") bias = t;
  ASSERT_TRUE(bias.defined());
  EXPECT_EQ(bias.scalar_type(), torch::kFloat32);
  EXPECT_FALSE(bias.requires_grad());
  Tensor ids = moelab::SafetensorsFile(kFixtures / "deepseek_v3" / "expected.safetensors").get("input_ids");
  model->forward(ids, {});
  Tensor chosen = model->routing()[0].topk_ids.clone();
  bias.zero_();  // the named tensor is the model's
  model->forward(ids, {});
  const moelab::RouterTrace& unbiased = model->routing()[0];
  EXPECT_FALSE(torch::equal(std::get<0>(unbiased.topk_ids.sort(-1)), std::get<0>(chosen.sort(-1))));
  Tensor scores = unbiased.logits.sigmoid().gather(-1, unbiased.topk_ids);
  EXPECT_TRUE(torch::allclose(unbiased.topk_weights, 2.5 * scores / scores.sum(-1, true)));
}

// A router transform on the sigmoid router: the choice follows the transformed logits; the weights are
// the transformed or the clean sigmoid scores of the chosen experts, renormalized and scaled.
TEST(Model, RouterTransformOnTheSigmoidRouter) {
  auto model = load("deepseek_v3");
  Tensor ids = torch::tensor({{5, 6, 7, 8}}, torch::kInt64);
  model->forward(ids, {});
  Tensor clean = model->routing()[0].logits.clone();
  // Sigmoid saturates, so the others are pushed down too: their biased scores (at most 0.39 in layer 1)
  // stay below experts 6 and 7's (1 + bias).
  moelab::RouterTransform boost{[](int, const Tensor& logits) {
    Tensor boosted = logits - 100;
    boosted.select(1, 7) += 200;
    boosted.select(1, 6) += 150;
    return boosted;
  }};
  model->set_router_transform(boost);
  model->forward(ids, {});
  const Tensor forced = torch::tensor({6, 7}).expand({4, 2});
  EXPECT_TRUE(torch::equal(std::get<0>(model->routing()[0].topk_ids.sort(-1)), forced));
  EXPECT_TRUE(torch::allclose(model->routing()[0].topk_weights, torch::full({4, 2}, 1.25)));  // sigmoid ~ 1 for both
  boost.weights_from_clean = true;
  model->set_router_transform(boost);
  model->forward(ids, {});
  Tensor scores = clean.sigmoid().gather(-1, model->routing()[0].topk_ids);
  EXPECT_TRUE(torch::allclose(model->routing()[0].topk_weights, 2.5 * scores / scores.sum(-1, true)));
}

TEST(Model, MissingTensorsAndUnknownTypesAreNamed) {
  moelab::test::TempDir dir;
  fs::copy_file(kFixtures / "olmoe" / "config.json", dir.path() / "config.json");
  moelab::SafetensorsFile full(kFixtures / "olmoe" / "model.safetensors");
  std::vector<std::pair<std::string, Tensor>> kept;
  for (const auto& name : full.names())
    if (name != "model.layers.1.mlp.gate.weight" && name != "lm_head.weight") kept.emplace_back(name, full.get(name));
  moelab::write_safetensors(dir.path() / "model.safetensors", kept);
  std::string error = moelab::test::error_of([&] { moelab::load_model(dir.path(), torch::kCPU, torch::kFloat32); });
  EXPECT_THAT(error, testing::HasSubstr("lacks 2 tensor(s)"));
  EXPECT_THAT(error, testing::HasSubstr("model.layers.1.mlp.gate.weight"));
  EXPECT_THAT(error, testing::HasSubstr("lm_head.weight"));
  dir.write("config.json", R"({"model_type": "gpt_oss"})");
  EXPECT_THAT(moelab::test::error_of([&] { moelab::load_model(dir.path(), torch::kCPU, torch::kFloat32); }),
              testing::HasSubstr("\"gpt_oss\" is not supported; supported: olmoe, mixtral, qwen2_moe, qwen3_moe, deepseek_v2, deepseek_v3, kimi_k2"));
}

}  // namespace

namespace {

TEST(DumpLogits, RunexpWritesTransformersLogitsForGivenIds) {
  moelab::test::TempDir dir;
  fs::path config = dir.write("dump.toml", "stages = [\"dump\"]\nrun_dir = \"runs\"\n[model]\npath = \"" + (kFixtures / "mixtral").string() +
                                               "\"\ndevice = \"cpu\"\n[dump]\nplugin = \"dump_logits\"\ninput = \"" +
                                               (kFixtures / "mixtral" / "expected.safetensors").string() + "\"\n");
  auto r = moelab::test::run_command(moelab::test::runexp_binary() + " " + config.string());
  ASSERT_EQ(r.status, 0) << r.output;
  fs::path run = fs::directory_iterator(dir.path() / "runs" / "dump")->path();
  moelab::SafetensorsFile out(run / "dump" / "logits.safetensors"), expected(kFixtures / "mixtral" / "expected.safetensors");
  EXPECT_LE((out.get("logits") - expected.get("logits")).abs().max().item<double>(), 1e-4);
  for (int layer : {0, 1, 2})
    EXPECT_LE((out.get("router_logits." + std::to_string(layer)) - expected.get("router_logits." + std::to_string(layer))).abs().max().item<double>(), 1e-4);
  EXPECT_EQ(out.metadata().at("model_type"), "mixtral");
}

TEST(TinyModel, IsADeterministicOlmoeWithItsTokenizerAndIsTheDefault) {
  fs::path tiny = fs::path(MOELAB_BINARY_DIR) / "models" / "tiny-olmoe";
  moelab::test::TempDir dir;
  auto r = moelab::test::run_command(std::string(MOELAB_BINARY_DIR) + "/bin/make_tiny_model " + dir.path().string() + " " +
                                     (fs::path(MOELAB_SOURCE_DIR) / "framework" / "model" / "tiny" / "tokenizer.json").string());
  ASSERT_EQ(r.status, 0) << r.output;
  EXPECT_EQ(moelab::read_file(dir.path() / "model.safetensors"), moelab::read_file(tiny / "model.safetensors"));
  auto model = moelab::load_model(tiny, torch::kCPU, torch::kFloat32);
  EXPECT_EQ(model->info().model_type, "olmoe");
  EXPECT_EQ(model->info().moe_layers.size(), 6u);
  auto tokenizer = moelab::Tokenizer::from_file(tiny / "tokenizer.json");
  EXPECT_EQ(static_cast<long long>(tokenizer->vocab_size()), model->info().vocab_size);
  auto ids = tokenizer->encode("Which gas do plants take in?");
  Tensor logits = model->forward(torch::tensor(ids).unsqueeze(0), {});
  EXPECT_TRUE(torch::isfinite(logits).all().item<bool>());
  // The default model.path runs: dump_logits through runexp with no [model] table.
  moelab::write_safetensors(dir.path() / "ids.safetensors", {{"input_ids", torch::tensor(ids).unsqueeze(0)}});
  fs::path config = dir.write("dump.toml", "stages = [\"dump\"]\nrun_dir = \"runs\"\n[dump]\nplugin = \"dump_logits\"\ninput = \"ids.safetensors\"\n");
  r = moelab::test::run_command(moelab::test::runexp_binary() + " " + config.string());
  ASSERT_EQ(r.status, 0) << r.output;
  EXPECT_THAT(r.output, testing::HasSubstr("tiny-olmoe (olmoe, 6 layers, 8 experts, top-2)"));
}

}  // namespace
