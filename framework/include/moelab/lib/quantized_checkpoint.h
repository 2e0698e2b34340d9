// Quantized model checkpoints (safetensors): every quantized matrix in packed form (<name>.codes,
// <name>.scales and, for INT formats, <name>.zeros), the finetuned routers when there are any
// (routers.<layer>), and JSON metadata: the bit plan, the quantization config, the router-finetuning
// hyper-parameters and the model fingerprint. Applying one to the full-precision model rebuilds the
// quantized (and recovered) model.
#pragma once

#include "moelab/model.h"
#include "moelab/lib/quant.h"

#include <nlohmann/json.hpp>

#include <filesystem>
#include <map>
#include <string>
#include <vector>

namespace moelab {

struct QuantizedMatrix {
  std::string name;  // checkpoint name of the weight, e.g. model.layers.3.mlp.experts.7.up_proj.weight
  PackedMatrix packed;
};

struct QuantizedCheckpoint {
  std::vector<QuantizedMatrix> matrices;
  std::map<int, torch::Tensor> routers;  // decoder layer -> gate [E, hidden]
  nlohmann::json metadata;               // {"plan", "quantization", "router_finetuning", "model_fingerprint"}
};

void save_quantized_checkpoint(const std::filesystem::path& file, Model& model, const QuantizedCheckpoint& checkpoint);
QuantizedCheckpoint read_quantized_checkpoint(const std::filesystem::path& file);

// Writes every matrix (dequantized, in the model's dtype) and router into the model after checking the
// model fingerprint; returns {"matrices", "routers", "packed_bytes", "formats": {format: count}}.
nlohmann::json apply_quantized_checkpoint(const std::filesystem::path& file, Model& model);

}  // namespace moelab
