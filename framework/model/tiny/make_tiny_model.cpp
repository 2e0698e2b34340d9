// Writes the built-in tiny model: a real OLMoE-architecture checkpoint in Hugging Face layout
// (config.json, model.safetensors, tokenizer.json), with weights drawn from a fixed seed so every
// build produces the same bytes. Six layers, so "the last 5 layers" experiments run on it.
//   make_tiny_model OUT_DIR TOKENIZER_JSON
#include "moelab/lib/safetensors.h"
#include "moelab/lib/files.h"

#include <ATen/CPUGeneratorImpl.h>
#include <fmt/format.h>
#include <nlohmann/json.hpp>
#include <torch/torch.h>

#include <iostream>

namespace {

constexpr int64_t kVocab = 1000, kHidden = 64, kLayers = 6, kHeads = 4, kIntermediate = 32, kExperts = 8, kTopK = 2;

nlohmann::json config() {
  return {{"architectures", {"OlmoeForCausalLM"}},
          {"model_type", "olmoe"},
          {"vocab_size", kVocab},
          {"hidden_size", kHidden},
          {"num_hidden_layers", kLayers},
          {"num_attention_heads", kHeads},
          {"num_key_value_heads", kHeads},
          {"intermediate_size", kIntermediate},
          {"num_experts", kExperts},
          {"num_experts_per_tok", kTopK},
          {"norm_topk_prob", false},
          {"clip_qkv", nullptr},
          {"attention_bias", false},
          {"rms_norm_eps", 1e-5},
          {"rope_theta", 10000.0},
          {"max_position_embeddings", 4096},
          {"tie_word_embeddings", false},
          {"hidden_act", "silu"},
          {"eos_token_id", 0},
          {"pad_token_id", 1},
          {"bos_token_id", nullptr},
          {"torch_dtype", "float32"}};
}

}  // namespace

int main(int argc, char** argv) {
  if (argc != 3) {
    std::cerr << "usage: make_tiny_model OUT_DIR TOKENIZER_JSON\n";
    return 2;
  }
  std::filesystem::path out = argv[1];
  std::filesystem::create_directories(out);
  at::Generator generator = at::detail::createCPUGenerator(20240903);
  auto normal = [&](std::vector<int64_t> shape, double std) { return at::normal(0.0, std, shape, generator); };
  std::vector<std::pair<std::string, torch::Tensor>> tensors;
  tensors.emplace_back("model.embed_tokens.weight", normal({kVocab, kHidden}, 0.5));
  for (int64_t l = 0; l < kLayers; ++l) {
    std::string p = fmt::format("model.layers.{}.", l);
    for (const char* proj : {"q_proj", "k_proj", "v_proj", "o_proj"})
      tensors.emplace_back(p + "self_attn." + proj + ".weight", normal({kHidden, kHidden}, 0.15));
    tensors.emplace_back(p + "self_attn.q_norm.weight", torch::ones({kHidden}));
    tensors.emplace_back(p + "self_attn.k_norm.weight", torch::ones({kHidden}));
    tensors.emplace_back(p + "input_layernorm.weight", torch::ones({kHidden}));
    tensors.emplace_back(p + "post_attention_layernorm.weight", torch::ones({kHidden}));
    tensors.emplace_back(p + "mlp.gate.weight", normal({kExperts, kHidden}, 0.3));
    for (int64_t e = 0; e < kExperts; ++e) {
      std::string ep = fmt::format("{}mlp.experts.{}.", p, e);
      tensors.emplace_back(ep + "gate_proj.weight", normal({kIntermediate, kHidden}, 0.15));
      tensors.emplace_back(ep + "up_proj.weight", normal({kIntermediate, kHidden}, 0.15));
      tensors.emplace_back(ep + "down_proj.weight", normal({kHidden, kIntermediate}, 0.15));
    }
  }
  tensors.emplace_back("model.norm.weight", torch::ones({kHidden}));
  tensors.emplace_back("lm_head.weight", normal({kVocab, kHidden}, 0.15));
  moelab::write_safetensors(out / "model.safetensors", tensors, {{"format", "pt"}, {"made_by", "moelab make_tiny_model"}});
  moelab::write_file_atomic(out / "config.json", config().dump(2) + "\n");
  moelab::write_file_atomic(out / "tokenizer.json", moelab::read_file(argv[2]));
  std::cout << "tiny OLMoE model written to " << out.string() << "\n";
  return 0;
}
