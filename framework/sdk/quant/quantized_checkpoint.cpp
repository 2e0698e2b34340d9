#include "moelab/lib/quantized_checkpoint.h"

#include "moelab/lib/json_read.h"
#include "moelab/lib/log.h"
#include "moelab/lib/router_checkpoint.h"
#include "moelab/lib/safetensors.h"

#include <fmt/format.h>
#include <torch/torch.h>

#include <set>

namespace moelab {

namespace {
constexpr const char* kKind = "quantized_checkpoint";
}

namespace {
// What a quantized checkpoint replaces: its expert matrices and routers.
std::set<std::string> replaced_by(const QuantizedCheckpoint& checkpoint, Model& model) {
  std::set<std::string> names;
  for (const auto& m : checkpoint.matrices) names.insert(m.name);
  for (const auto& [layer, w] : checkpoint.routers) names.insert(router_tensor_name(model, layer));
  return names;
}
}  // namespace

void save_quantized_checkpoint(const std::filesystem::path& file, Model& model, const QuantizedCheckpoint& checkpoint) {
  std::vector<std::pair<std::string, torch::Tensor>> tensors;
  nlohmann::json shapes = nlohmann::json::object();
  for (const auto& m : checkpoint.matrices) {
    tensors.emplace_back(m.name + ".codes", m.packed.codes);
    tensors.emplace_back(m.name + ".scales", m.packed.scales);
    if (m.packed.zeros.defined()) tensors.emplace_back(m.name + ".zeros", m.packed.zeros);
    shapes[m.name] = {{"format", quant_format_name(m.packed.spec.format)}, {"group_size", m.packed.spec.group_size},
                      {"rows", m.packed.rows}, {"cols", m.packed.cols}};
  }
  for (const auto& [layer, w] : checkpoint.routers) tensors.emplace_back(fmt::format("routers.{}", layer), w.detach().to(torch::kCPU, torch::kFloat32));
  std::map<std::string, std::string> metadata = {{"moelab.kind", kKind}, {"model_fingerprint", model_fingerprint(model)}, {"matrices", shapes.dump()}};
  for (const auto& [key, value] : checkpoint.metadata.items())
    if (key != "model_fingerprint" && key != "model_content_crc32") metadata[key] = value.dump();
  metadata["model_content_crc32"] = nlohmann::json(model_content_hash(model, replaced_by(checkpoint, model))).dump();
  write_safetensors(file, tensors, metadata);
}

QuantizedCheckpoint read_quantized_checkpoint(const std::filesystem::path& file) {
  SafetensorsFile st(file);
  const auto& meta = st.metadata();
  auto kind = meta.find("moelab.kind");
  if (kind == meta.end() || kind->second != kKind)
    throw std::runtime_error(fmt::format("{}: not a moelab quantized checkpoint (metadata moelab.kind is not \"{}\")", file.string(), kKind));
  QuantizedCheckpoint out;
  for (const auto& [key, value] : meta) {
    if (key == "moelab.kind" || key == "matrices") continue;
    out.metadata[key] = key == "model_fingerprint" ? nlohmann::json(value) : parse_json(value, fmt::format("{} metadata {}", file.string(), key));
  }
  auto matrices = meta.find("matrices");
  if (matrices == meta.end()) throw std::runtime_error(fmt::format("{}: no \"matrices\" metadata", file.string()));
  const nlohmann::json shapes = parse_json(matrices->second, file.string() + " metadata matrices");
  for (const auto& [name, shape] : shapes.items()) {
    QuantizedMatrix m;
    m.name = name;
    m.packed.spec = {quant_format(shape.at("format").get<std::string>()), shape.at("group_size").get<long long>()};
    m.packed.rows = shape.at("rows").get<long long>();
    m.packed.cols = shape.at("cols").get<long long>();
    m.packed.codes = st.get(name + ".codes");
    m.packed.scales = st.get(name + ".scales");
    if (st.contains(name + ".zeros")) m.packed.zeros = st.get(name + ".zeros");
    out.matrices.push_back(std::move(m));
  }
  for (const auto& name : st.names())
    if (name.rfind("routers.", 0) == 0) out.routers[std::stoi(name.substr(8))] = st.get(name);
  return out;
}

nlohmann::json apply_quantized_checkpoint(const std::filesystem::path& file, Model& model) {
  QuantizedCheckpoint ckpt = read_quantized_checkpoint(file);
  const std::string expected = ckpt.metadata.value("model_fingerprint", "");
  if (expected != model_fingerprint(model))
    throw std::runtime_error(fmt::format("{}: made for model {}, but this model is {}", file.string(), expected, model_fingerprint(model)));
  check_content_hash(file, ckpt.metadata.value("model_content_crc32", ""), model, replaced_by(ckpt, model));
  std::map<std::string, torch::Tensor> weights;
  for (auto& [name, t] : model.named_weights()) weights[name] = t;
  torch::NoGradGuard no_grad;
  long long bytes = 0;
  nlohmann::json formats = nlohmann::json::object();
  for (const auto& m : ckpt.matrices) {
    auto it = weights.find(m.name);
    if (it == weights.end()) throw std::runtime_error(fmt::format("{}: matrix {} is not a weight of this model", file.string(), m.name));
    if (it->second.size(0) != m.packed.rows || it->second.size(1) != m.packed.cols)
      throw std::runtime_error(fmt::format("{}: matrix {} is {}x{} in the checkpoint but {}x{} in the model", file.string(), m.name,
                                           m.packed.rows, m.packed.cols, it->second.size(0), it->second.size(1)));
    it->second.copy_(unpack(m.packed));
    bytes += m.packed.bytes();
    formats[quant_format_name(m.packed.spec.format)] = formats.value(quant_format_name(m.packed.spec.format), 0) + 1;
  }
  for (const auto& [layer, w] : ckpt.routers) model.router_weight(layer).copy_(w);
  log::info("{}: applied {} quantized matrices ({:.2f} MB packed) and {} routers", file.string(), ckpt.matrices.size(), bytes / 1e6,
            ckpt.routers.size());
  return {{"matrices", ckpt.matrices.size()}, {"routers", ckpt.routers.size()}, {"packed_bytes", bytes}, {"formats", formats}};
}

}  // namespace moelab
