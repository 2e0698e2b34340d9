// Bad model folders end in errors naming config.json's key or the tensor, before any work: ranges of
// every config.json field per architecture, and the checkpoint's tensors against the config (layer and
// expert counts, every shape, dtypes, tensors nothing uses, shape products that overflow). Folders are
// copies of tests/fixtures/models with config.json edited and model.safetensors rewritten.
#include "checkpoint_check.h"
#include "moe_model.h"
#include "moelab/lib/files.h"
#include "moelab/lib/safetensors.h"
#include "moelab/lib/vocab_check.h"
#include "moelab/tokenizer.h"
#include "test_run.h"

#include <gmock/gmock.h>
#include <nlohmann/json.hpp>

#include <functional>

namespace {

namespace fs = std::filesystem;
using moelab::test::error_of;
using moelab::test::TempDir;
using testing::HasSubstr;
using Tensors = std::vector<std::pair<std::string, torch::Tensor>>;

const fs::path kFixtures = fs::path(MOELAB_SOURCE_DIR) / "tests" / "fixtures" / "models";

// A copy of fixture `name` in `dir`: config.json with `changes` applied (null erases a key), and
// model.safetensors rewritten by `edit` when one is given.
fs::path folder_with(const TempDir& dir, const std::string& name, const nlohmann::json& changes,
                     const std::function<void(Tensors&)>& edit = {}) {
  nlohmann::json config = nlohmann::json::parse(moelab::read_file(kFixtures / name / "config.json"));
  for (const auto& [key, value] : changes.items()) {
    if (value.is_null()) config.erase(key);
    else config[key] = value;
  }
  dir.write("config.json", config.dump(1));
  moelab::SafetensorsFile weights(kFixtures / name / "model.safetensors");
  Tensors tensors;
  for (const std::string& tensor : weights.names()) tensors.emplace_back(tensor, weights.get(tensor).clone());
  if (edit) edit(tensors);
  moelab::write_safetensors(dir.path() / "model.safetensors", tensors);
  return dir.path();
}

std::string config_error(const std::string& name, const nlohmann::json& changes) {
  TempDir dir;
  return error_of([&] { moelab::read_model_config(folder_with(dir, name, changes)); });
}

std::string load_error(const std::string& name, const nlohmann::json& changes, const std::function<void(Tensors&)>& edit = {}) {
  TempDir dir;
  return error_of([&] { moelab::load_model(folder_with(dir, name, changes, edit), torch::kCPU, torch::kFloat32); });
}

torch::Tensor& tensor(Tensors& tensors, const std::string& name) {
  for (auto& [n, t] : tensors)
    if (n == name) return t;
  throw std::runtime_error("no tensor " + name);
}

struct Case {
  const char* fixture;
  nlohmann::json changes;
  const char* message;
};

void expect_config_errors(const std::vector<Case>& cases) {
  for (const Case& c : cases) {
    const std::string error = config_error(c.fixture, c.changes);
    EXPECT_THAT(error, HasSubstr("config.json")) << c.fixture << " " << c.changes.dump();
    EXPECT_THAT(error, HasSubstr(c.message)) << c.fixture << " " << c.changes.dump();
  }
}

// Counts that divide or index (0 heads was a SIGFPE), sizes, epsilons and types, on OLMoE.
TEST(ConfigValidation, CommonCountsAndSizesAreRangeChecked) {
  expect_config_errors({
      {"olmoe", {{"num_attention_heads", 0}}, "num_attention_heads = 0, expected an integer >= 1"},
      {"olmoe", {{"num_key_value_heads", 0}}, "num_key_value_heads = 0, expected an integer >= 1"},
      {"olmoe", {{"num_key_value_heads", 3}}, "num_attention_heads 4 is not a multiple of num_key_value_heads 3"},
      {"olmoe", {{"num_attention_heads", 5}, {"num_key_value_heads", 5}}, "hidden_size 64 is not divisible by num_attention_heads 5"},
      {"olmoe", {{"head_dim", 15}}, "head_dim 15 is odd"},
      {"olmoe", {{"num_hidden_layers", 0}}, "num_hidden_layers = 0, expected an integer >= 1"},
      {"olmoe", {{"num_hidden_layers", 3.5}}, "num_hidden_layers: expected an integer, found number 3.5"},
      {"olmoe", {{"num_hidden_layers", 1000000000000LL}}, "num_hidden_layers = 1000000000000 is not a plausible layer count"},
      {"olmoe", {{"hidden_size", -64}}, "hidden_size = -64, expected an integer >= 1"},
      {"olmoe", {{"hidden_size", "64"}}, "hidden_size: expected an integer, found string \"64\""},
      {"olmoe", {{"vocab_size", 0}}, "vocab_size = 0, expected an integer >= 1"},
      {"olmoe", {{"vocab_size", 18446744073709551615ULL}}, "vocab_size: expected an integer in range"},
      {"olmoe", {{"intermediate_size", 0}}, "intermediate_size = 0, expected an integer >= 1"},
      {"olmoe", {{"num_experts", -8}}, "num_experts = -8, expected an integer >= 0"},
      {"olmoe", {{"num_experts_per_tok", 0}}, "num_experts_per_tok 0 is not between 1 and the 8 experts"},
      {"olmoe", {{"num_experts_per_tok", 9}}, "num_experts_per_tok 9 is not between 1 and the 8 experts"},
      {"olmoe", {{"rms_norm_eps", 0}}, "rms_norm_eps = 0, expected a number > 0"},
      {"olmoe", {{"rms_norm_eps", -1e-5}}, "rms_norm_eps = -1e-05, expected a number > 0"},
      {"olmoe", {{"clip_qkv", -1.0}}, "clip_qkv = -1, expected a number >= 0"},
      {"olmoe", {{"tie_word_embeddings", "no"}}, "tie_word_embeddings: expected true or false"},
      {"olmoe", {{"rope_theta", 0}, {"rope_parameters", nullptr}}, "rope_theta = 0, expected a number > 0"},
      {"olmoe", {{"rope_parameters", {{"rope_type", "default"}, {"rope_theta", -1.0}}}}, "rope_parameters: rope_theta = -1.0, expected a number > 0"},
      {"olmoe", {{"max_position_embeddings", -1}}, "max_position_embeddings = -1, expected an integer >= 0"},
  });
}

// Each architecture's own keys: MoE layer patterns (decoder_sparse_step 0 was a SIGFPE), MLA sizes,
// groups, scaling, windows and every rope type's parameters.
TEST(ConfigValidation, EachArchitecturesOwnKeysAreRangeChecked) {
  expect_config_errors({
      {"qwen3_moe", {{"decoder_sparse_step", 0}}, "decoder_sparse_step = 0, expected an integer >= 1"},
      {"qwen2_moe", {{"decoder_sparse_step", -2}}, "decoder_sparse_step = -2, expected an integer >= 1"},
      {"qwen2_moe", {{"mlp_only_layers", {1, 5}}}, "mlp_only_layers names layer 5, but num_hidden_layers = 3"},
      {"qwen2_moe", {{"mlp_only_layers", {"1"}}}, "mlp_only_layers[0]: expected an integer, found string \"1\""},
      {"qwen2_moe", {{"shared_expert_intermediate_size", -1}}, "shared_expert_intermediate_size = -1, expected an integer >= 0"},
      {"qwen2_moe", {{"max_window_layers", -1}}, "max_window_layers = -1, expected an integer >= 0"},
      {"mixtral", {{"num_local_experts", 2}, {"num_experts_per_tok", 3}}, "num_experts_per_tok 3 is not between 1 and the 2 experts"},
      {"mixtral_linear_sliding", {{"sliding_window", 0}}, "sliding_window 0 is not a positive number of keys"},
      {"mixtral_linear_sliding", {{"rope_parameters", {{"rope_type", "linear"}, {"rope_theta", 1e6}, {"factor", 0.0}}}}, "factor = 0.0, expected a number > 0"},
      {"mixtral_linear_sliding", {{"rope_parameters", {{"rope_type", "linear"}, {"rope_theta", 1e6}}}}, "rope_type \"linear\" needs a factor"},
      {"qwen3_moe_yarn", {{"rope_parameters", {{"rope_type", "yarn"}, {"factor", 4.0}, {"beta_fast", 0}, {"original_max_position_embeddings", 32}}}},
       "beta_fast = 0, expected a number > 0"},
      {"qwen2_moe_llama3_sliding",
       {{"rope_parameters", {{"rope_type", "llama3"}, {"factor", 8.0}, {"low_freq_factor", 4.0}, {"high_freq_factor", 4.0},
                             {"original_max_position_embeddings", 16}}}},
       "llama3 needs high_freq_factor (4) > low_freq_factor (4)"},
      {"deepseek_v2", {{"kv_lora_rank", 0}}, "kv_lora_rank = 0, expected an integer >= 1"},
      {"deepseek_v2", {{"qk_rope_head_dim", 7}, {"qk_head_dim", nullptr}}, "qk_rope_head_dim 7 is odd"},
      {"deepseek_v2", {{"v_head_dim", 0}}, "v_head_dim = 0, expected an integer >= 1"},
      {"deepseek_v2", {{"q_lora_rank", -1}}, "q_lora_rank = -1, expected an integer >= 0"},
      {"deepseek_v2", {{"n_group", 0}}, "n_group = 0, expected an integer >= 1"},
      {"deepseek_v2", {{"routed_scaling_factor", 0}}, "routed_scaling_factor = 0, expected a number > 0"},
      {"deepseek_v2", {{"n_shared_experts", -1}}, "n_shared_experts = -1, expected an integer >= 0"},
      {"deepseek_v3", {{"moe_layer_freq", 0}}, "moe_layer_freq = 0, expected an integer >= 1"},
      {"deepseek_v3", {{"first_k_dense_replace", -1}}, "first_k_dense_replace = -1, expected an integer >= 0"},
      {"deepseek_v3", {{"topk_group", 0}}, "topk_group = 0, expected an integer >= 1"},
      {"deepseek_v3", {{"topk_group", 5}}, "topk_group 5 is not between 1 and n_group 4"},
      {"deepseek_v3", {{"num_nextn_predict_layers", -1}}, "num_nextn_predict_layers = -1, expected an integer >= 0"},
  });
}

TEST(ConfigValidation, TokenIdsLieInTheVocabulary) {
  expect_config_errors({
      {"olmoe", {{"pad_token_id", 256}}, "pad_token_id 256 is outside the vocabulary (vocab_size = 256)"},
      {"olmoe", {{"eos_token_id", {0, 300}}}, "eos_token_id [0,300] is outside the vocabulary (vocab_size = 256)"},
      {"olmoe", {{"eos_token_id", "</s>"}}, "eos_token_id: expected an integer, found string \"</s>\""},
      {"olmoe", {{"pad_token_id", -2}}, "pad_token_id -2 is outside the vocabulary"},
  });
  TempDir dir;
  EXPECT_EQ(moelab::read_model_config(folder_with(dir, "olmoe", {{"pad_token_id", -1}, {"eos_token_id", {7, 0}}})).eos_token_id, 7);
}

TEST(ConfigValidation, ConfigJsonItselfIsCheckedAsJson) {
  TempDir dir;
  folder_with(dir, "olmoe", {});
  dir.write("config.json", "{\"model_type\": \"olmoe\",\n \"vocab_size\": }");
  EXPECT_THAT(error_of([&] { moelab::read_model_config(dir.path()); }), HasSubstr("config.json: not valid JSON: parse error at line 2"));
  dir.write("config.json", std::string(100000, '[') + std::string(100000, ']'));
  EXPECT_THAT(error_of([&] { moelab::read_model_config(dir.path()); }), HasSubstr("config.json: not valid JSON: nesting deeper than 512 levels"));
  dir.write("config.json", "[1, 2]");
  EXPECT_THAT(error_of([&] { moelab::read_model_config(dir.path()); }), HasSubstr("config.json: expected a JSON object, found array"));
}

// Counts that disagree with the stored tensors: extra experts were silently dropped, extra layers never
// ran; both are errors naming the tensors and the key now, as are too few.
TEST(CheckpointValidation, LayerAndExpertCountsMatchTheStoredTensors) {
  EXPECT_THAT(load_error("olmoe", {{"num_experts", 4}}),
              HasSubstr("model.layers.0.mlp.experts.4.* stored (experts 4-7), but "));
  EXPECT_THAT(load_error("olmoe", {{"num_experts", 4}}), HasSubstr("config.json num_experts = 4: the config and the weights disagree"));
  EXPECT_THAT(load_error("mixtral", {{"num_local_experts", 2}}),
              HasSubstr("model.layers.0.block_sparse_moe.experts.2.* stored (experts 2-3)"));
  EXPECT_THAT(load_error("olmoe", {{"num_experts", 16}}),
              HasSubstr("model.layers.0.mlp.experts holds 8 of the 16 experts that "));
  EXPECT_THAT(load_error("olmoe", {{"num_hidden_layers", 2}}),
              HasSubstr("model.layers.2.* stored (layers 2), but "));
  EXPECT_THAT(load_error("olmoe", {{"num_hidden_layers", 2}}), HasSubstr("config.json num_hidden_layers = 2"));
  EXPECT_THAT(load_error("olmoe", {{"num_hidden_layers", 6}}),
              HasSubstr("no model.layers.3.* tensors, but "));
  EXPECT_THAT(load_error("olmoe", {{"num_hidden_layers", 6}}), HasSubstr("num_hidden_layers = 6 (stored layers: 0-2)"));
  // Experts stored in a layer the config makes dense.
  EXPECT_THAT(load_error("qwen2_moe", {{"mlp_only_layers", {0, 1}}}),
              HasSubstr("model.layers.0.mlp.experts.0.down_proj.weight stored, but layer 0 is dense with "));
  EXPECT_THAT(load_error("deepseek_v3", {{"first_k_dense_replace", 2}}), HasSubstr("(its MoE layer pattern: first_k_dense_replace, moe_layer_freq)"));
}

// Every tensor's shape against the config: a transposed router was a raw LibTorch backtrace naming no tensor.
TEST(CheckpointValidation, ShapesAndDtypesAreCheckedBeforeLoading) {
  std::string error = load_error("olmoe", {}, [](Tensors& t) {
    torch::Tensor& router = tensor(t, "model.layers.1.mlp.gate.weight");
    router = router.t().contiguous();
  });
  EXPECT_THAT(error, HasSubstr("model.layers.1.mlp.gate.weight is [64, 8] in model.safetensors, expected [8, 64] (num_experts, hidden_size)"));
  EXPECT_THAT(error, HasSubstr("config.json implies"));
  EXPECT_THAT(load_error("olmoe", {{"vocab_size", 300}}),
              HasSubstr("model.embed_tokens.weight is [256, 64] in model.safetensors, expected [300, 64] (vocab_size, hidden_size)"));
  EXPECT_THAT(load_error("olmoe", {{"intermediate_size", 16}}),
              HasSubstr("model.layers.0.mlp.experts.0.gate_proj.weight is [32, 64] in model.safetensors, expected [16, 64] (intermediate_size, hidden_size)"));
  EXPECT_THAT(load_error("olmoe", {{"num_key_value_heads", 4}}),
              HasSubstr("model.layers.0.self_attn.k_proj.weight is [32, 64] in model.safetensors, expected [64, 64] (num_key_value_heads*head_dim, hidden_size)"));
  EXPECT_THAT(load_error("deepseek_v2", {{"kv_lora_rank", 20}}),
              HasSubstr("model.layers.0.self_attn.kv_a_proj_with_mqa.weight is [32, 64] in model.safetensors, expected [28, 64] ((kv_lora_rank+qk_rope_head_dim), hidden_size)"));
  EXPECT_THAT(load_error("qwen2_moe", {{"shared_expert_intermediate_size", 24}}),
              HasSubstr("model.layers.0.mlp.shared_expert.gate_proj.weight is [40, 64] in model.safetensors, expected [24, 64] (shared_expert_intermediate_size, hidden_size)"));
  EXPECT_THAT(load_error("olmoe", {}, [](Tensors& t) { tensor(t, "model.norm.weight") = torch::ones({64}, torch::kInt64); }),
              HasSubstr("model.norm.weight is Long in model.safetensors"));
  // A product of config sizes that overflows int64 is named, never wrapped into a small shape.
  EXPECT_THAT(load_error("olmoe", {{"head_dim", 4611686018427387904LL}}),
              HasSubstr("config.json: num_attention_heads * head_dim = 4 * 4611686018427387904 overflows"));
}

// Tensors the config leaves unused (here: biases with attention_bias false) would be silently ignored.
TEST(CheckpointValidation, TensorsTheConfigDoesNotUseAreNamed) {
  const std::string error = load_error("olmoe", {}, [](Tensors& t) { t.emplace_back("model.layers.0.self_attn.q_proj.bias", torch::zeros({64})); });
  EXPECT_THAT(error, HasSubstr("1 tensor(s) that olmoe with "));
  EXPECT_THAT(error, HasSubstr("does not use: model.layers.0.self_attn.q_proj.bias"));
  // Buffers the config determines are not weights, and DeepSeek-V3's multi-token-prediction layer is allowed.
  TempDir dir;
  EXPECT_NO_THROW(moelab::load_model(folder_with(dir, "olmoe", {}, [](Tensors& t) {
                                       t.emplace_back("model.layers.0.self_attn.rotary_emb.inv_freq", torch::ones({8}));
                                     }),
                                     torch::kCPU, torch::kFloat32));
  auto with_mtp_layer = [](Tensors& t) { t.emplace_back("model.layers.3.eh_proj.weight", torch::zeros({64, 128})); };
  TempDir mtp;
  EXPECT_NO_THROW(moelab::load_model(folder_with(mtp, "deepseek_v3", {{"num_nextn_predict_layers", 1}}, with_mtp_layer), torch::kCPU, torch::kFloat32));
  EXPECT_THAT(load_error("deepseek_v3", {{"num_nextn_predict_layers", 0}}, with_mtp_layer),
              HasSubstr("model.layers.3.* stored (layers 3), but "));
}

// Every fixture's expected tensors are exactly its stored ones (the table is the loader's).
TEST(CheckpointValidation, ExpectedTensorsAreExactlyEachFixturesTensors) {
  for (const char* name : {"olmoe", "olmoe_clip_norm", "olmoe_dynamic_bias", "mixtral", "mixtral_linear_sliding", "qwen2_moe",
                           "qwen2_moe_llama3_sliding", "qwen3_moe", "qwen3_moe_yarn", "deepseek_v2", "deepseek_v2_yarn", "deepseek_v3"}) {
    moelab::ModelConfig config = moelab::read_model_config(kFixtures / name);
    moelab::SafetensorsFile weights(kFixtures / name / "model.safetensors");
    std::vector<std::string> expected;
    for (const auto& t : moelab::expected_tensors(config, "config.json")) {
      expected.push_back(t.name);
      EXPECT_EQ(weights.shape(t.name), t.shape) << name << " " << t.name;
    }
    std::sort(expected.begin(), expected.end());
    std::vector<std::string> stored = weights.names();
    std::sort(stored.begin(), stored.end());
    EXPECT_EQ(expected, stored) << name;
  }
}

// The host calls check_tokenizer_fits_model where both are loaded: the built-in tiny model and its
// tokenizer agree; a model with fewer embedding rows than the tokenizer's ids is refused by name.
TEST(VocabCheck, TokenizerIdsMustBeEmbeddingRows) {
  const fs::path tiny = fs::path(MOELAB_BINARY_DIR) / "models" / "tiny-olmoe";
  auto model = moelab::load_model(tiny, torch::kCPU, torch::kFloat32);
  auto tokenizer = moelab::Tokenizer::from_file(tiny / "tokenizer.json");
  EXPECT_NO_THROW(moelab::check_tokenizer_fits_model(*tokenizer, tiny / "tokenizer.json", model->info(), tiny));
  moelab::ModelInfo smaller = model->info();
  smaller.vocab_size = 512;
  const std::string error = error_of([&] { moelab::check_tokenizer_fits_model(*tokenizer, tiny / "tokenizer.json", smaller, tiny); });
  EXPECT_THAT(error, HasSubstr((tiny / "tokenizer.json").string() + ": token id 999 "));
  EXPECT_THAT(error, HasSubstr("is outside the model's vocabulary: " + (tiny / "config.json").string() + " has vocab_size = 512"));
}

}  // namespace
