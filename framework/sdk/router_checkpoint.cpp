#include "moelab/lib/router_checkpoint.h"

#include "moelab/lib/log.h"
#include "moelab/lib/safetensors.h"

#include <boost/crc.hpp>
#include <fmt/format.h>
#include <fmt/ranges.h>

#include <algorithm>
#include <set>
#include <stdexcept>

namespace moelab {

namespace {
std::string tensor_fingerprint(const torch::Tensor& t) {
  torch::Tensor d = t.detach().to(torch::kCPU, torch::kFloat64);
  return fmt::format("sum={:.9g};abs={:.9g};sq={:.9g}", d.sum().item<double>(), d.abs().sum().item<double>(), d.pow(2).sum().item<double>());
}
std::string gate_name(int layer) { return fmt::format("router.{}", layer); }
}  // namespace

std::string model_fingerprint(const Model& model) {
  const ModelInfo& i = model.info();
  return fmt::format("{}:L{}:H{}:E{}:k{}:V{}:moe[{}]", i.model_type, i.num_layers, i.hidden_size, i.num_experts, i.top_k, i.vocab_size,
                     fmt::join(i.moe_layers, ","));
}

std::string model_content_hash(Model& model, const std::set<std::string>& replaced) {
  torch::NoGradGuard no_grad;
  std::vector<std::pair<std::string, torch::Tensor>> weights;
  for (const auto& [name, weight] : model.named_weights())
    if (!replaced.count(name)) weights.emplace_back(name, weight);
  std::sort(weights.begin(), weights.end(), [](const auto& a, const auto& b) { return a.first < b.first; });
  boost::crc_32_type crc;
  std::vector<torch::Tensor> samples;
  for (const auto& [name, weight] : weights) {
    crc.process_bytes(name.data(), name.size());
    for (std::int64_t size : weight.sizes()) crc.process_bytes(&size, sizeof size);
    const std::int64_t n = weight.numel(), k = std::min<std::int64_t>(n, 16);
    if (k == 0) continue;
    torch::Tensor at = torch::arange(k, torch::dtype(torch::kInt64).device(weight.device())) * (n / k);
    samples.push_back(weight.reshape(-1).index_select(0, at).to(torch::kFloat32));
  }
  if (!samples.empty()) {
    // As bfloat16, so the same checkpoint loaded in float32 or bfloat16 hashes alike.
    torch::Tensor all = torch::cat(samples).to(torch::kBFloat16).cpu().contiguous();
    crc.process_bytes(all.data_ptr(), static_cast<std::size_t>(all.numel()) * all.element_size());
  }
  return fmt::format("{:08x}", crc.checksum());
}

void check_content_hash(const std::filesystem::path& file, const std::string& recorded, Model& model, const std::set<std::string>& replaced) {
  if (recorded.empty()) {
    log::warn("{}: no model_content_crc32 (made by an older moelab): cannot check that it was made from this model's weights", file.string());
    return;
  }
  if (const std::string now = model_content_hash(model, replaced); now != recorded)
    throw std::runtime_error(fmt::format("{}: made from a model with other weights (content hash {}, this model's {}); a model of the same "
                                         "shapes is not enough: load the model it was made from", file.string(), recorded, now));
}

std::string router_tensor_name(Model& model, int layer) {
  torch::Tensor gate = model.router_weight(layer);
  for (const auto& [name, weight] : model.named_weights())
    if (weight.is_same(gate)) return name;
  return fmt::format("the router of layer {}", layer);
}

void save_router_checkpoint(const std::filesystem::path& file, Model& model, const std::vector<int>& layers,
                            const std::map<int, torch::Tensor>& base_routers, std::map<std::string, std::string> metadata) {
  std::vector<std::pair<std::string, torch::Tensor>> tensors;
  std::vector<std::string> base_prints;
  for (int layer : layers) {
    tensors.emplace_back(gate_name(layer), model.router_weight(layer).detach().to(torch::kFloat32));
    base_prints.push_back(fmt::format("{}={}", layer, tensor_fingerprint(base_routers.at(layer))));
  }
  metadata["moelab.kind"] = "router_checkpoint";
  metadata["target_layers"] = fmt::format("{}", fmt::join(layers, ","));
  metadata["model_fingerprint"] = model_fingerprint(model);
  metadata["base_gate_fingerprint"] = fmt::format("{}", fmt::join(base_prints, "|"));
  std::set<std::string> replaced;
  for (int layer : layers) replaced.insert(router_tensor_name(model, layer));
  metadata["model_content_crc32"] = model_content_hash(model, replaced);
  write_safetensors(file, tensors, metadata);
}

std::map<int, double> apply_router_checkpoint(const std::filesystem::path& file, Model& model) {
  SafetensorsFile ckpt(file);
  const auto& meta = ckpt.metadata();
  auto field = [&](const char* key) {
    auto it = meta.find(key);
    if (it == meta.end()) throw std::runtime_error(fmt::format("{}: not a router checkpoint (no \"{}\" metadata)", file.string(), key));
    return it->second;
  };
  if (field("model_fingerprint") != model_fingerprint(model))
    throw std::runtime_error(fmt::format("{}: made for model {}, but this model is {}", file.string(), field("model_fingerprint"),
                                         model_fingerprint(model)));
  {
    std::set<std::string> replaced;
    for (const auto& name : ckpt.names()) replaced.insert(router_tensor_name(model, std::stoi(name.substr(name.find('.') + 1))));
    auto recorded = meta.find("model_content_crc32");
    check_content_hash(file, recorded == meta.end() ? "" : recorded->second, model, replaced);
  }
  // The gates it was trained from must be the gates it replaces: same shapes are not enough.
  std::map<int, std::string> base_prints;
  std::string prints = field("base_gate_fingerprint");
  for (std::size_t start = 0; start < prints.size();) {
    std::size_t end = std::min(prints.find('|', start), prints.size());
    std::string entry = prints.substr(start, end - start);
    base_prints[std::stoi(entry.substr(0, entry.find('=')))] = entry.substr(entry.find('=') + 1);
    start = end + 1;
  }
  for (const auto& [layer, print] : base_prints)
    if (tensor_fingerprint(model.router_weight(layer)) != print)
      throw std::runtime_error(fmt::format("{}: layer {} was trained from other base routers than this model's ({} vs {}); "
                                           "load the base model it was trained on", file.string(), layer, print,
                                           tensor_fingerprint(model.router_weight(layer))));
  std::map<int, double> change;
  torch::NoGradGuard no_grad;
  for (const auto& name : ckpt.names()) {
    int layer = std::stoi(name.substr(name.find('.') + 1));
    torch::Tensor gate = model.router_weight(layer);
    torch::Tensor trained = ckpt.get(name).to(gate.device(), gate.scalar_type());
    if (!torch::isfinite(trained).all().item<bool>())
      throw std::runtime_error(fmt::format("{}: {} (layer {}) holds NaN/Inf; a router checkpoint with them is never applied", file.string(), name, layer));
    change[layer] = ((trained - gate).norm() / gate.norm().clamp_min(1e-30)).item<double>();
    gate.copy_(trained);
    log::info("router checkpoint {}: layer {} moved {:.3e} relative to the current gate", file.filename().string(), layer, change[layer]);
  }
  bool moved = false;
  for (const auto& [layer, c] : change) moved = moved || c > 0;
  if (!moved) log::warn("router checkpoint {} changes nothing: its gates equal the model's (was training applied?)", file.string());
  return change;
}

RestoreModelOnExit::RestoreModelOnExit(Model& model, bool experts) {
  auto keep = [&](const torch::Tensor& t) { saved_.emplace_back(t, t.detach().to(torch::kCPU, /*non_blocking=*/false, /*copy=*/true)); };
  for (int layer : model.info().moe_layers) {
    keep(model.router_weight(layer));
    if (!experts) continue;
    ExpertWeights ex = model.expert_weights(layer);
    for (const torch::Tensor* stack : {&ex.gate, &ex.up, &ex.down}) keep(*stack);
  }
}

RestoreModelOnExit::~RestoreModelOnExit() {
  torch::NoGradGuard no_grad;
  for (auto& [tensor, copy] : saved_) tensor.copy_(copy);
}

}  // namespace moelab
