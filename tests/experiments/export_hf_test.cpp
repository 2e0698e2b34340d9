// The export_hf stage: a full export (sharded, with index) loads back through moelab's loader as the
// model with the routers applied, every other tensor byte for byte the model folder's; a patch holds the
// router checkpoint's tensors under the checkpoint's own HF names for each architecture; a recovered
// quantized checkpoint exports its dequantized experts and routers.
#include "moe_model.h"
#include "moelab/moelab.h"
#include "moelab/lib/files.h"
#include "moelab/lib/quantized_checkpoint.h"
#include "moelab/lib/router_checkpoint.h"
#include "moelab/lib/safetensors.h"
#include "test_run.h"

#include <gmock/gmock.h>

using moelab::test::TempDir;
using testing::HasSubstr;

namespace {

namespace fs = std::filesystem;

const fs::path kTiny = fs::path(MOELAB_BINARY_DIR) / "models" / "tiny-olmoe";
const fs::path kFixtures = fs::path(MOELAB_SOURCE_DIR) / "tests" / "fixtures" / "models";

nlohmann::json run_stage(moelab::ExperimentRun& run, const TempDir& dir, const std::string& id) {
  fs::path out = dir.path() / (id + "_out");
  fs::create_directories(out);
  nlohmann::json summary;
  run.make<moelab::Stage>(id)->run(out, summary);
  return summary;
}

// A router checkpoint for `layers` whose gates are the model's plus seeded noise; the model keeps its own.
fs::path make_router_checkpoint(moelab::Model& model, const fs::path& file, const std::vector<int>& layers) {
  torch::NoGradGuard no_grad;
  std::map<int, torch::Tensor> base;
  for (int l : layers) base[l] = model.router_weight(l).detach().clone();
  torch::manual_seed(3);
  for (int l : layers) model.router_weight(l).add_(0.05 * torch::randn_like(base[l]));
  moelab::save_router_checkpoint(file, model, layers, base, {{"steps", "1"}});
  for (int l : layers) model.router_weight(l).copy_(base[l]);
  return file;
}

torch::Tensor ids() { return torch::tensor({{5, 17, 42, 7, 99, 3, 64, 12}, {8, 1, 250, 33, 2, 77, 19, 4}}, torch::kInt64); }

std::string config(const fs::path& model, const std::string& export_keys) {
  return "stages = []\n[model]\npath = \"" + model.string() + "\"\ndevice = \"cpu\"\n[export]\nplugin = \"export_hf\"\n" + export_keys;
}

TEST(ExportHf, FullExportLoadsAsTheModelWithTheRoutersApplied) {
  TempDir dir;
  const fs::path routers = dir.path() / "routers.safetensors";
  auto run = moelab::test::start_run(dir, config(kTiny, "checkpoint = \"" + routers.string() + "\"\nmax_shard_bytes = 300000\n"));
  moelab::Model& model = run->model();
  make_router_checkpoint(model, routers, {3, 5});
  const nlohmann::json summary = run_stage(*run, dir, "export");
  const fs::path out = dir.path() / "export_out" / "hf";
  EXPECT_EQ(summary["mode"], "full");
  EXPECT_EQ(summary["routers"], 2);
  ASSERT_GT(summary["shards"].get<int>(), 1);  // the tiny model is larger than 300 kB

  // The run's model is left as it was: its routers are the base ones again.
  moelab::Checkpoint source(kTiny);
  EXPECT_TRUE(torch::equal(model.router_weight(3), source.get("model.layers.3.mlp.gate.weight")));

  // config, tokenizer, index; every tensor under its name and dtype, each in the shard the index names.
  EXPECT_EQ(moelab::read_file(out / "config.json"), moelab::read_file(kTiny / "config.json"));
  EXPECT_EQ(moelab::read_file(out / "tokenizer.json"), moelab::read_file(kTiny / "tokenizer.json"));
  const nlohmann::json index = moelab::read_json(out / "model.safetensors.index.json");
  const auto names = source.names();
  ASSERT_EQ(index["weight_map"].size(), names.size());
  moelab::Checkpoint exported(out);
  const std::set<std::string> replaced = {"model.layers.3.mlp.gate.weight", "model.layers.5.mlp.gate.weight"};
  long long total = 0;
  for (const std::string& name : names) {
    ASSERT_TRUE(exported.contains(name)) << name;
    const fs::path shard = out / index["weight_map"][name].get<std::string>();
    EXPECT_EQ(exported.file_of(name).path().filename(), shard.filename()) << name;
    EXPECT_EQ(moelab::SafetensorsFile(shard).metadata().at("format"), "pt");  // transformers refuses files without it
    EXPECT_EQ(exported.file_of(name).dtype(name), source.file_of(name).dtype(name)) << name;
    total += exported.get(name).numel() * exported.get(name).element_size();
    if (!replaced.count(name)) EXPECT_TRUE(torch::equal(exported.get(name), source.get(name))) << name;
  }
  EXPECT_EQ(index["metadata"]["total_size"], total);
  const moelab::SafetensorsFile checkpoint(routers);
  EXPECT_TRUE(torch::equal(exported.get("model.layers.5.mlp.gate.weight"), checkpoint.get("router.5")));

  // Loaded by moelab's loader, the export gives the logits of the model with the router checkpoint applied.
  torch::NoGradGuard no_grad;
  auto reloaded = moelab::load_model(out, torch::kCPU, torch::kFloat32);
  const torch::Tensor got = reloaded->forward(ids(), {});
  moelab::RestoreModelOnExit restore(model, false);
  moelab::apply_router_checkpoint(routers, model);
  const torch::Tensor want = model.forward(ids(), {});
  EXPECT_LE((got - want).abs().max().item<double>(), 1e-6);
  EXPECT_GT((want - moelab::load_model(kTiny, torch::kCPU, torch::kFloat32)->forward(ids(), {})).abs().max().item<double>(), 1e-4)
      << "the routers changed nothing: the comparison would not see a wrong export";
}

TEST(ExportHf, SmallModelsExportOneFileWithoutAnIndex) {
  TempDir dir;
  const fs::path routers = dir.path() / "routers.safetensors";
  auto run = moelab::test::start_run(dir, config(kTiny, "checkpoint = \"" + routers.string() + "\"\n"));
  make_router_checkpoint(run->model(), routers, {4});
  EXPECT_EQ(run_stage(*run, dir, "export")["shards"], 1);
  EXPECT_TRUE(fs::exists(dir.path() / "export_out" / "hf" / "model.safetensors"));
  EXPECT_FALSE(fs::exists(dir.path() / "export_out" / "hf" / "model.safetensors.index.json"));
}

// The router tensor name transformers uses for each architecture, from its modeling code.
std::string hf_router_name(const std::string& architecture, int layer) {
  return fmt::format(architecture == "mixtral" ? "model.layers.{}.block_sparse_moe.gate.weight" : "model.layers.{}.mlp.gate.weight", layer);
}

TEST(ExportHf, PatchHoldsTheRoutersUnderTheCheckpointsOwnNamesForEachArchitecture) {
  for (const std::string architecture : {"olmoe", "mixtral", "qwen2_moe", "qwen3_moe", "deepseek_v2"}) {
    SCOPED_TRACE(architecture);
    TempDir dir;
    const fs::path folder = kFixtures / architecture, routers = dir.path() / "routers.safetensors";
    auto run = moelab::test::start_run(dir, config(folder, "checkpoint = \"" + routers.string() + "\"\nmode = \"patch\"\n"));
    moelab::Model& model = run->model();
    std::vector<int> layers = {model.info().moe_layers.front()};
    if (model.info().moe_layers.size() > 1) layers.push_back(model.info().moe_layers.back());
    make_router_checkpoint(model, routers, layers);
    const nlohmann::json summary = run_stage(*run, dir, "export");
    const fs::path out = dir.path() / "export_out" / "hf";
    const moelab::SafetensorsFile patch(out / "router_patch.safetensors");
    std::vector<std::string> expected;
    for (int l : layers) expected.push_back(hf_router_name(architecture, l));
    std::sort(expected.begin(), expected.end());
    EXPECT_EQ(patch.names(), expected);
    const moelab::SafetensorsFile checkpoint(routers);
    const moelab::SafetensorsFile own(folder / "model.safetensors");
    for (int l : layers) {
      const std::string name = hf_router_name(architecture, l);
      ASSERT_TRUE(own.contains(name)) << name;  // the checkpoint's own tensor of that name
      EXPECT_EQ(patch.shape(name), own.shape(name));
      EXPECT_TRUE(torch::equal(patch.get(name), checkpoint.get(fmt::format("router.{}", l)))) << name;
    }
    const nlohmann::json about = moelab::read_json(out / "router_patch.json");
    EXPECT_EQ(about["apply_to"]["model_type"], architecture);
    EXPECT_EQ(about["apply_to"]["path"], fs::weakly_canonical(folder).string());
    EXPECT_EQ(about["tensors"], nlohmann::json(expected));
    EXPECT_FALSE(fs::exists(out / "model.safetensors"));
  }
}

TEST(ExportHf, RecoveredQuantizedModelExportsDequantizedExpertsAndRouters) {
  TempDir dir;
  auto run = moelab::test::start_run(dir, config(kTiny, "checkpoint = \"recovered.safetensors\"\n") +
                                              "[quantize]\nplugin = \"quantize\"\nmethod = \"rtn\"\nformat = \"int4\"\ngroup_size = 32\n"
                                              "[patch]\nplugin = \"export_hf\"\ncheckpoint = \"recovered.safetensors\"\nmode = \"patch\"\n"
                                              "[unrecovered]\nplugin = \"export_hf\"\ncheckpoint = \"quantize_out/quantized.safetensors\"\n"
                                              "mode = \"patch\"\n");
  moelab::Model& model = run->model();
  nlohmann::json quantized_summary;
  {
    moelab::RestoreModelOnExit restore(model, true);  // the quantize stage leaves its dequantized experts in the model
    quantized_summary = run_stage(*run, dir, "quantize");
  }
  // A recovered checkpoint: the quantized experts plus finetuned routers of two layers.
  moelab::QuantizedCheckpoint recovered = moelab::read_quantized_checkpoint(dir.path() / "quantize_out" / "quantized.safetensors");
  torch::manual_seed(4);
  for (int l : {1, 4}) recovered.routers[l] = model.router_weight(l).detach() + 0.05 * torch::randn_like(model.router_weight(l));
  const fs::path file = dir.path() / "recovered.safetensors";
  moelab::save_quantized_checkpoint(file, model, recovered);

  run_stage(*run, dir, "export");
  torch::NoGradGuard no_grad;
  auto reloaded = moelab::load_model(dir.path() / "export_out" / "hf", torch::kCPU, torch::kFloat32);
  const torch::Tensor got = reloaded->forward(ids(), {});
  {
    moelab::RestoreModelOnExit restore(model, true);
    moelab::apply_quantized_checkpoint(file, model);
    EXPECT_LE((got - model.forward(ids(), {})).abs().max().item<double>(), 1e-6);
  }

  run_stage(*run, dir, "patch");
  const moelab::SafetensorsFile patch(dir.path() / "patch_out" / "hf" / "router_patch.safetensors");
  EXPECT_EQ(patch.names(), (std::vector<std::string>{"model.layers.1.mlp.gate.weight", "model.layers.4.mlp.gate.weight"}));
  EXPECT_TRUE(torch::equal(patch.get("model.layers.4.mlp.gate.weight"), recovered.routers.at(4).to(torch::kFloat32)));
  EXPECT_THAT(moelab::read_json(dir.path() / "patch_out" / "hf" / "router_patch.json")["note"].get<std::string>(),
              HasSubstr("quantized experts"));
  // The quantize stage's own checkpoint has no routers: nothing to patch, and the error says what to export.
  EXPECT_THAT(moelab::test::error_of([&] { run_stage(*run, dir, "unrecovered"); }),
              testing::AllOf(HasSubstr("[unrecovered] checkpoint"), HasSubstr("holds no finetuned routers"), HasSubstr("recovered.safetensors")));
}

}  // namespace
