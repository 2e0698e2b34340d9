// Exports finetuned routers (a router checkpoint) or a quantized/recovered model (a quantized checkpoint)
// as a Hugging Face checkpoint folder. mode = "full": config.json, tokenizer and the model folder's other
// files copied, every tensor under its original name and dtype with the routers (and a quantized
// checkpoint's dequantized experts) replaced, sharded with model.safetensors.index.json above
// max_shard_bytes: transformers' from_pretrained loads it as the model moelab ran. mode = "patch": only the
// router tensors under their HF names (router_patch.safetensors) and router_patch.json naming the base
// model (path, config.json CRC, the hub repo and commit of a hub cache folder) they replace tensors of.
#include "moelab/moelab.h"
#include "moelab/lib/files.h"
#include "moelab/lib/log.h"
#include "moelab/lib/quantized_checkpoint.h"
#include "moelab/lib/router_checkpoint.h"
#include "moelab/lib/safetensors.h"

#include <boost/crc.hpp>

#include <algorithm>
#include <set>

namespace {

namespace fs = std::filesystem;

enum class Mode { full, patch };
const std::vector<std::pair<std::string, Mode>> kModes = {{"full", Mode::full}, {"patch", Mode::patch}};
enum class RouterDtype { checkpoint, float32 };
const std::vector<std::pair<std::string, RouterDtype>> kRouterDtypes = {{"checkpoint", RouterDtype::checkpoint}, {"float32", RouterDtype::float32}};

struct Settings {
  fs::path checkpoint;
  Mode mode;
  std::string folder;
  RouterDtype router_dtype;
  long long max_shard_bytes;
};

const moelab::Options<Settings>& options() {
  static const auto o =
      moelab::Options<Settings>("export_hf", moelab::Kind::stage, "0.1.0",
                                "writes finetuned or recovered routers as a Hugging Face checkpoint (full folder or router patch)")
          .path("checkpoint", &Settings::checkpoint, moelab::required,
                "a router checkpoint (\"@finetune/routers.safetensors\") or a quantized one (\"@recover/recovered.safetensors\")")
          .choice("mode", &Settings::mode, Mode::full, kModes,
                  "full: a complete model folder from_pretrained loads; patch: only the router tensors under their HF names")
          .string("folder", &Settings::folder, "hf", "the output folder's name inside the stage folder")
          .choice("router_dtype", &Settings::router_dtype, RouterDtype::checkpoint, kRouterDtypes,
                  "checkpoint: routers in the dtype of the model's own router tensors (bf16 rounds trained float32 gates); float32: as trained")
          .integer("max_shard_bytes", &Settings::max_shard_bytes, 5000000000LL,
                   "full mode: tensor bytes per safetensors shard; above it, model-0000i-of-0000n.safetensors with an index")
          .at_least(1);
  return o;
}

// Names read from the model folder path when it is a hub cache snapshot (.../models--ORG--NAME/snapshots/COMMIT).
nlohmann::json hub_origin(const fs::path& folder) {
  const fs::path canonical = fs::weakly_canonical(folder);
  const fs::path snapshots = canonical.parent_path();
  if (snapshots.filename() != "snapshots") return nullptr;
  std::string repo = snapshots.parent_path().filename().string();
  if (repo.rfind("models--", 0) != 0) return nullptr;
  repo = repo.substr(8);
  if (const auto at = repo.find("--"); at != std::string::npos) repo.replace(at, 2, "/");
  return {{"repo_id", repo}, {"commit", canonical.filename().string()}};
}

std::string crc32_of_file(const fs::path& file) {
  const std::string bytes = moelab::read_file(file);
  boost::crc_32_type crc;
  crc.process_bytes(bytes.data(), bytes.size());
  return fmt::format("{:08x}", crc.checksum());
}

bool is_weight_file(const fs::path& file) {
  const std::string name = file.filename().string();
  return file.extension() == ".safetensors" || file.extension() == ".bin" || file.extension() == ".pt" || file.extension() == ".pth" ||
         name == "model.safetensors.index.json" || name == "pytorch_model.bin.index.json";
}

class ExportHf final : public moelab::Stage {
 public:
  ExportHf(const moelab::Config& config, moelab::RunContext& context) : config_(config), settings_(options().read(config)), context_(context) {}

  void run(const fs::path& out_dir, nlohmann::json& summary) override {
    const fs::path file = context_.run_path(settings_.checkpoint);
    const std::map<std::string, std::string> meta = moelab::SafetensorsFile(file).metadata();
    const auto kind = meta.find("moelab.kind");
    const bool quantized = kind != meta.end() && kind->second == "quantized_checkpoint";
    moelab::Model& model = context_.model();
    const fs::path& base = context_.model_folder();
    moelab::Checkpoint source(base);

    // The state to export, applied to the shared model and undone when this stage ends.
    moelab::RestoreModelOnExit restore(model, /*experts=*/quantized);
    std::set<std::string> replaced;  // checkpoint names of the tensors this export changes
    std::set<std::string> routers;
    torch::NoGradGuard no_grad;
    nlohmann::json quantization = nullptr;
    if (quantized) {
      const moelab::QuantizedCheckpoint q = moelab::read_quantized_checkpoint(file);
      if (settings_.mode == Mode::patch && q.routers.empty())
        throw std::runtime_error(fmt::format("[{}] checkpoint ({}): {} holds no finetuned routers (a quantize stage's checkpoint); a "
                                             "patch has nothing to hold: export finetune_lm's recovered.safetensors, or use mode = \"full\"",
                                             config_.id(), config_.where("checkpoint"), file.string()));
      moelab::apply_quantized_checkpoint(file, model);
      for (const auto& m : q.matrices) replaced.insert(m.name);
      for (const auto& [layer, gate] : q.routers) routers.insert(moelab::router_tensor_name(model, layer));
      quantization = q.metadata.value("quantization", nlohmann::json(nullptr));
    } else {
      const moelab::SafetensorsFile ckpt(file);
      moelab::apply_router_checkpoint(file, model);
      for (const std::string& name : ckpt.names()) routers.insert(moelab::router_tensor_name(model, std::stoi(name.substr(name.find('.') + 1))));
    }
    replaced.insert(routers.begin(), routers.end());
    for (const std::string& name : replaced)
      if (!source.contains(name))
        throw std::runtime_error(fmt::format("[{}] the exported tensor {} is not in the model folder {}: moelab's name for it differs "
                                             "from the checkpoint's, so transformers would not load it", config_.id(), name, base.string()));

    std::map<std::string, torch::Tensor> weights;
    for (const auto& [name, t] : model.named_weights())
      if (replaced.count(name)) weights[name] = t;
    auto exported = [&](const std::string& name) {
      const bool router = routers.count(name) > 0;
      const torch::ScalarType dtype = router && settings_.router_dtype == RouterDtype::float32
                                          ? torch::kFloat32 : source.file_of(name).dtype(name);
      return weights.at(name).detach().to(torch::kCPU, dtype).contiguous();
    };
    rounding_note(routers, exported);

    const fs::path folder = out_dir / settings_.folder;
    fs::remove_all(folder);
    fs::create_directories(folder);
    nlohmann::json base_model = {{"path", fs::weakly_canonical(base).string()},
                                 {"model_type", model.info().model_type},
                                 {"config_json_crc32", crc32_of_file(base / "config.json")},
                                 {"hub", hub_origin(base)}};
    const std::map<std::string, std::string> st_meta = {{"format", "pt"}, {"moelab.export", settings_.checkpoint.string()}};
    summary = {{"mode", moelab::choice_name(settings_.mode, kModes)}, {"folder", folder.string()},
               {"source", quantized ? "quantized_checkpoint" : "router_checkpoint"}, {"routers", routers.size()},
               {"replaced_tensors", replaced.size()}, {"base_model", base_model}};

    if (settings_.mode == Mode::patch) {
      std::vector<std::pair<std::string, torch::Tensor>> tensors;
      for (const std::string& name : routers) tensors.emplace_back(name, exported(name));
      moelab::write_safetensors(folder / "router_patch.safetensors", tensors, st_meta);
      nlohmann::json patch = {{"format", "moelab router patch"},
                              {"apply_to", base_model},
                              {"tensors", routers},
                              {"source", file.string()},
                              {"replaces", "each tensor replaces the base model's tensor of the same name; every other tensor is the base model's"}};
      if (quantized)
        patch["note"] = "routers trained for the quantized experts described by `quantization`; with full-precision experts they are not the recovered model";
      if (quantized) patch["quantization"] = quantization;
      moelab::write_file_atomic(folder / "router_patch.json", patch.dump(2) + "\n");
      moelab::log::info("export_hf: {} router tensors under their HF names -> {}", routers.size(), folder.string());
      return;
    }

    for (const auto& entry : fs::directory_iterator(base))
      if (entry.is_regular_file() && !is_weight_file(entry.path())) fs::copy_file(entry.path(), folder / entry.path().filename());
    // Shards of at most max_shard_bytes (a single larger tensor gets a shard of its own), in name order.
    std::vector<std::string> names = source.names();
    std::sort(names.begin(), names.end());
    std::vector<std::vector<std::string>> shards(1);
    long long shard_bytes = 0, total_bytes = 0;
    auto bytes_of = [&](const std::string& name) {
      const moelab::SafetensorsFile& f = source.file_of(name);
      const bool float32_router = routers.count(name) && settings_.router_dtype == RouterDtype::float32;
      long long n = static_cast<long long>(c10::elementSize(float32_router ? torch::kFloat32 : f.dtype(name)));
      for (int64_t d : f.shape(name)) n *= d;
      return n;
    };
    for (const std::string& name : names) {
      const long long b = bytes_of(name);
      if (shard_bytes > 0 && shard_bytes + b > settings_.max_shard_bytes) shards.emplace_back(), shard_bytes = 0;
      shards.back().push_back(name);
      shard_bytes += b;
      total_bytes += b;
    }
    nlohmann::json weight_map = nlohmann::json::object();
    moelab::Progress progress(fmt::format("export_hf ({} shards)", shards.size()), static_cast<long long>(shards.size()), "tensors");
    for (std::size_t s = 0; s < shards.size(); ++s) {
      const std::string shard_name = shards.size() == 1 ? "model.safetensors"
                                                        : fmt::format("model-{:05}-of-{:05}.safetensors", s + 1, shards.size());
      std::vector<std::pair<std::string, torch::Tensor>> tensors;
      for (const std::string& name : shards[s]) {
        tensors.emplace_back(name, replaced.count(name) ? exported(name) : source.get(name));
        weight_map[name] = shard_name;
      }
      moelab::write_safetensors(folder / shard_name, tensors, st_meta);
      progress.advance(static_cast<long long>(tensors.size()), shard_name);
    }
    progress.finish();
    if (shards.size() > 1)
      moelab::write_file_atomic(folder / "model.safetensors.index.json",
                                nlohmann::json({{"metadata", {{"total_size", total_bytes}}}, {"weight_map", weight_map}}).dump(2) + "\n");
    summary["shards"] = shards.size();
    summary["total_bytes"] = total_bytes;
    moelab::write_file_atomic(folder / "moelab_export.json", nlohmann::json({{"base_model", base_model}, {"source", file.string()},
                                                                             {"replaced_tensors", replaced}}).dump(2) + "\n");
    moelab::log::info("export_hf: {} tensors ({} replaced, {:.2f} GB) in {} shard{} -> {}", names.size(), replaced.size(), total_bytes / 1e9,
                      shards.size(), shards.size() == 1 ? "" : "s", folder.string());
  }

 private:
  // Says how far the routers move when they are stored in a narrower dtype than they were trained in.
  template <class Exported>
  void rounding_note(const std::set<std::string>& routers, Exported&& exported) {
    double worst = 0;
    std::string where;
    for (const auto& [name, t] : context_.model().named_weights()) {
      if (!routers.count(name)) continue;
      const torch::Tensor stored = exported(name).to(torch::kFloat32), trained = t.detach().to(torch::kCPU, torch::kFloat32);
      const double change = ((stored - trained).norm() / trained.norm().clamp_min(1e-30)).item<double>();
      if (change > worst) worst = change, where = name;
    }
    if (worst > 0)
      moelab::log::warn("[{}] router_dtype = \"checkpoint\" rounds the trained routers to the model's dtype (largest relative change {:.2e}, "
                        "{}); router_dtype = \"float32\" keeps them as trained", config_.id(), worst, where);
  }

  moelab::Config config_;  // for id() and where() in messages
  Settings settings_;
  moelab::RunContext& context_;
};

}  // namespace

MOELAB_PLUGIN(options, ExportHf)
