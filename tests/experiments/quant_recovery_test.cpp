// Quantization recovery on the built-in tiny model: the bit plan respects its ratio, GPTQ's checkpoint
// rebuilds the quantized model exactly, router-only training leaves every other tensor bit-identical,
// Winogrande's partial scoring, and both quant_recovery configs end to end.
#include "moe_model.h"
#include "moelab/moelab.h"
#include "moelab/lib/files.h"
#include "moelab/lib/loglik.h"
#include "moelab/lib/quantized_checkpoint.h"
#include "moelab/lib/router_checkpoint.h"
#include "test_run.h"

#include <gmock/gmock.h>

using moelab::test::TempDir;
using testing::HasSubstr;

namespace {

namespace fs = std::filesystem;

const fs::path kTiny = fs::path(MOELAB_BINARY_DIR) / "models" / "tiny-olmoe";
const fs::path kData = fs::path(MOELAB_SOURCE_DIR) / "configs" / "data";

std::string base_config() {
  return "stages = []\n[model]\npath = \"" + kTiny.string() + "\"\n[text]\nplugin = \"text\"\npath = \"" + (kData / "text" / "prose.txt").string() +
         "\"\n[alpha]\nplugin = \"alpha\"\n[plan]\nplugin = \"bit_plan\"\nalpha = \"alpha_out/alpha.json\"\nlow_format = \"int3\"\nhigh_format = \"mxfp8\"\n"
         "[layer_plan]\nplugin = \"bit_plan\"\nalpha = \"alpha_out/alpha.json\"\ngranularity = \"layer\"\nratio = 0.5\n"
         "[quantize]\nplugin = \"quantize\"\nplan = \"plan_out/plan.json\"\ncalibration = \"text\"\nnsamples = 8\nseqlen = 48\n"
         "[lm]\nplugin = \"lm_ce\"\n[recover]\nplugin = \"finetune_lm\"\ndataset = \"text\"\nobjective = \"lm\"\nnsamples = 6\nseqlen = 32\n"
         "lr = 0.05\nquantized = \"quantize_out/quantized.safetensors\"\n";
}

nlohmann::json run_stage(moelab::ExperimentRun& run, const TempDir& dir, const std::string& id) {
  fs::path out = dir.path() / (id + "_out");
  fs::create_directories(out);
  nlohmann::json summary;
  run.make<moelab::Stage>(id)->run(out, summary);
  return summary;
}

std::map<std::string, torch::Tensor> snapshot(moelab::Model& model) {
  std::map<std::string, torch::Tensor> out;
  for (auto& [name, t] : model.named_weights()) out[name] = t.detach().clone();
  return out;
}

TEST(QuantRecovery, PlanGivesTheLowFormatToTheHighestAlphaShare) {
  TempDir dir;
  auto run = moelab::test::start_run(dir, base_config());
  run_stage(*run, dir, "alpha");
  run_stage(*run, dir, "plan");
  auto alpha = nlohmann::json::parse(moelab::read_file(dir.path() / "alpha_out" / "alpha.json"));
  auto plan = nlohmann::json::parse(moelab::read_file(dir.path() / "plan_out" / "plan.json"))["formats"];
  ASSERT_EQ(plan.size(), 6u * 8 * 3);
  double lowest_low = 1e9, highest_high = -1e9;
  long long low = 0;
  for (const auto& row : alpha) {
    const std::string format = plan.at(row["name"].get<std::string>());
    const double a = row["alpha"].get<double>();
    if (format == "int3") ++low, lowest_low = std::min(lowest_low, a);
    else highest_high = std::max(highest_high, a);
  }
  EXPECT_EQ(low, std::llround(0.3 * 144));
  EXPECT_GE(lowest_low, highest_high);
  // The default estimator is the public script's Hill, and the plan says which one ranked.
  EXPECT_EQ(alpha[0]["method"], "hill");
  EXPECT_EQ(nlohmann::json::parse(moelab::read_file(dir.path() / "plan_out" / "plan.json"))["rule"]["alpha_method"], "hill");
  // By layer: whole layers share one format, half of them low.
  run_stage(*run, dir, "layer_plan");
  auto by_layer = nlohmann::json::parse(moelab::read_file(dir.path() / "layer_plan_out" / "plan.json"))["formats"];
  std::map<int, std::set<std::string>> formats;
  for (const auto& row : alpha) formats[row["layer"].get<int>()].insert(by_layer.at(row["name"].get<std::string>()).get<std::string>());
  int low_layers = 0;
  for (const auto& [layer, f] : formats) {
    EXPECT_EQ(f.size(), 1u) << layer;
    low_layers += f.count("mxfp4");
  }
  EXPECT_EQ(low_layers, 3);
}

TEST(QuantRecovery, HandWrittenPlansAreCheckedAgainstTheModel) {
  TempDir dir;
  dir.write("bad.json", R"({"default": "int4", "formats": {"model.layers.1.mlp.gate_proj.weight": "int3"}})");
  dir.write("good.json", R"({"default": "int4", "formats": {"model.layers.1.mlp.experts.0.up_proj.weight": "mxfp4"}})");
  auto run = moelab::test::start_run(dir, base_config() + "[bad]\nplugin = \"bit_plan\"\nplan_file = \"bad.json\"\n"
                                                          "[good]\nplugin = \"bit_plan\"\nplan_file = \"good.json\"\n");
  EXPECT_THAT(moelab::test::error_of([&] { run_stage(*run, dir, "bad"); }), HasSubstr("is not an expert matrix of this model"));
  // The quantize stage reads plans the same careful way.
  dir.write("no_formats.json", R"({"default": "int4"})");
  auto quantize = moelab::test::start_run(dir, base_config() + "[q]\nplugin = \"quantize\"\nplan = \"no_formats.json\"\nmethod = \"rtn\"\n");
  EXPECT_THAT(moelab::test::error_of([&] { run_stage(*quantize, dir, "q"); }), HasSubstr("no_formats.json has no \"formats\" object"));
  auto summary = run_stage(*run, dir, "good");
  EXPECT_EQ(summary["counts"]["mxfp4"], 1);
  EXPECT_EQ(summary["counts"]["int4"], 143);
}

TEST(QuantRecovery, CheckpointRebuildsTheQuantizedModelAndRouterTrainingTouchesOnlyRouters) {
  TempDir dir;
  auto run = moelab::test::start_run(dir, base_config());
  run_stage(*run, dir, "alpha");
  run_stage(*run, dir, "plan");
  moelab::Model& model = run->model();
  auto full = snapshot(model);
  auto quantized = run_stage(*run, dir, "quantize");
  EXPECT_EQ(quantized["matrices"], 144);
  EXPECT_EQ(quantized["rtn_fallbacks"], 0);
  // Quantization changed every expert matrix and nothing else.
  auto after_quantize = snapshot(model);
  for (const auto& [name, t] : after_quantize)
    EXPECT_EQ(torch::equal(t, full[name]), name.find(".experts.") == std::string::npos) << name;

  torch::Tensor ids = torch::tensor(run->tokenizer().encode("The clockmaker repaired watches for the whole town."), torch::kInt64).unsqueeze(0);
  torch::Tensor quantized_logits;
  {
    torch::NoGradGuard no_grad;
    quantized_logits = model.forward(ids, {}).clone();
  }
  auto recovered = run_stage(*run, dir, "recover");
  // Router-only: every tensor but the routers is bit-identical to before training (experts' gate_proj included).
  auto after_training = snapshot(model);
  for (const auto& [name, t] : after_training)
    if (name.find(".mlp.gate.weight") == std::string::npos) EXPECT_TRUE(torch::equal(t, after_quantize[name])) << name;
  for (const auto& [layer, change] : recovered["relative_router_change"].items()) EXPECT_GT(change.get<double>(), 0) << layer;

  // A fresh full-precision model + quantized.safetensors = the quantized model, to the last bit.
  auto fresh = moelab::load_model(kTiny, torch::kCPU, torch::kFloat32);
  auto report = moelab::apply_quantized_checkpoint(dir.path() / "quantize_out" / "quantized.safetensors", *fresh);
  EXPECT_EQ(report["matrices"], 144);
  torch::NoGradGuard no_grad;
  EXPECT_TRUE(torch::equal(fresh->forward(ids, {}), quantized_logits));
  // recovered.safetensors = the quantized model with the finetuned routers.
  auto rebuilt = moelab::load_model(kTiny, torch::kCPU, torch::kFloat32);
  moelab::apply_quantized_checkpoint(dir.path() / "recover_out" / "recovered.safetensors", *rebuilt);
  moelab::apply_router_checkpoint(dir.path() / "recover_out" / "routers.safetensors", model);
  EXPECT_TRUE(torch::equal(rebuilt->forward(ids, {}), model.forward(ids, {})));
  auto meta = moelab::read_quantized_checkpoint(dir.path() / "recover_out" / "recovered.safetensors").metadata;
  EXPECT_EQ(meta["router_finetuning"]["lr"].get<double>(), 0.05);
  EXPECT_TRUE(meta["plan"]["model.layers.0.mlp.experts.0.gate_proj.weight"].is_string());
  EXPECT_EQ(meta["quantization"]["method"], "gptq");
  // [model] quantized = ... rebuilds it in any experiment.
  auto from_config = moelab::test::start_run(dir, "stages = []\n[model]\npath = \"" + kTiny.string() + "\"\nquantized = \"" +
                                                      (dir.path() / "recover_out" / "recovered.safetensors").string() + "\"\n");
  EXPECT_TRUE(torch::equal(from_config->model().forward(ids, {}), model.forward(ids, {})));
  // Another model refuses it.
  auto other = moelab::load_model(fs::path(MOELAB_SOURCE_DIR) / "tests/fixtures/models/qwen3_moe", torch::kCPU, torch::kFloat32);
  EXPECT_THAT(moelab::test::error_of([&] { moelab::apply_quantized_checkpoint(dir.path() / "quantize_out" / "quantized.safetensors", *other); }),
              HasSubstr("made for model"));
}

TEST(QuantRecovery, ExpertsWithoutCalibrationTokensFallBackToRtnWithAWarning) {
  TempDir dir;
  // One window of 2 tokens: each layer routes 2 tokens to at most 4 of its 8 experts.
  auto run = moelab::test::start_run(dir, base_config() + "[starved]\nplugin = \"quantize\"\nformat = \"int4\"\ncalibration = \"text\"\n"
                                                          "nsamples = 1\nseqlen = 2\n");
  auto summary = run_stage(*run, dir, "starved");
  EXPECT_GE(summary["rtn_fallbacks"].get<long long>(), 6 * 4 * 3);
  EXPECT_EQ(summary["matrices"], 144);
  EXPECT_THAT(moelab::read_file(run->run_dir() / "log.txt"), HasSubstr("received no calibration token"));
}

TEST(QuantRecovery, WinograndeScoresOneContinuationAfterEachOptionsContext) {
  TempDir dir;
  // scoring is left to the form: Winogrande is scored by loglik, as lm-eval does.
  auto run = moelab::test::start_run(dir, "stages = []\n[model]\npath = \"" + kTiny.string() + "\"\n[wg]\nplugin = \"jsonl\"\npath = \"" +
                                              (kData / "winogrande_sample.jsonl").string() + "\"\n[eval]\nplugin = \"evaluate\"\ndataset = \"wg\"\n");
  auto summary = run_stage(*run, dir, "eval");
  EXPECT_EQ(summary["scoring"], "loglik");
  EXPECT_FALSE(summary["base"].contains("acc_norm")) << "lm-eval reports acc only for Winogrande";
  auto predictions = nlohmann::json::parse(moelab::read_file(dir.path() / "eval_out" / "predictions.json"));
  auto dataset = run->make<moelab::Dataset>("wg");
  moelab::Model& model = run->model();
  const moelab::Tokenizer& tok = run->tokenizer();
  torch::NoGradGuard no_grad;
  for (std::size_t i = 0; i < dataset->size(); ++i) {
    const auto& requests = dataset->at(i).record["lm_eval"]["requests"];
    ASSERT_EQ(requests.size(), 2u);
    EXPECT_EQ(requests[0]["continuation"], requests[1]["continuation"]);
    std::vector<double> scores;
    for (const auto& r : requests) {
      auto pair = moelab::encode_pair(tok, r["context"].get<std::string>(), r["continuation"].get<std::string>());
      std::vector<std::int64_t> ids = pair.context;
      const auto start = static_cast<long long>(ids.size());
      ids.insert(ids.end(), pair.continuation.begin(), pair.continuation.end());
      torch::Tensor logp = model.forward(torch::tensor(ids).unsqueeze(0), {}).log_softmax(-1)[0];
      double sum = 0;
      for (std::size_t j = 0; j < pair.continuation.size(); ++j) sum += logp[start - 1 + static_cast<long long>(j)][pair.continuation[j]].item<double>();
      scores.push_back(sum);
      EXPECT_NEAR(predictions[i]["base"]["loglik"][scores.size() - 1].get<double>(), sum, 1e-4) << i;
    }
    EXPECT_EQ(predictions[i]["base"]["acc"].get<std::string>(), scores[0] >= scores[1] ? "A" : "B") << i;
  }
  const auto& first = dataset->at(0).record["lm_eval"]["requests"];
  EXPECT_THAT(first[0]["context"].get<std::string>(), testing::EndsWith("because the trophy"));
  EXPECT_EQ(first[0]["continuation"], " is too large.");
}

TEST(QuantRecovery, HellaswagContextIsCleanedAsLmEvalDoes) {
  TempDir dir;
  dir.write("hs.jsonl", R"({"activity_label": "Roof shingle removal", "ctx_a": "A man is sitting on a roof.", "ctx_b": "he", "ctx": "x", )"
                        R"("endings": ["is using wrap to wrap a pair of skis.", "starts pulling up roofing [title] on a roof."], "label": "1"})" "\n");
  auto run = moelab::test::start_run(dir, "stages = []\n[hs]\nplugin = \"jsonl\"\npath = \"hs.jsonl\"\n");
  auto dataset = run->make<moelab::Dataset>("hs");
  EXPECT_EQ(dataset->at(0).record["lm_eval"]["requests"][1]["context"], "Roof shingle removal: A man is sitting on a roof. He");
  EXPECT_EQ(dataset->at(0).record["lm_eval"]["requests"][1]["continuation"], " starts pulling up roofing. on a roof.");
  EXPECT_EQ(dataset->at(0).choices[1], "starts pulling up roofing. on a roof.");
  EXPECT_EQ(dataset->at(0).answer, 1);
}

TEST(QuantRecoveryConfigs, BothRunEndToEndWithTheComparisonTable) {
  for (const char* config : {"quant_recovery_mxfp4", "quant_recovery_int4"}) {
    TempDir dir;
    auto r = moelab::test::run_command(moelab::test::runexp_binary() + " " + MOELAB_SOURCE_DIR + "/configs/" + config + ".toml --set run_dir=" +
                                       dir.path().string());
    ASSERT_EQ(r.status, 0) << r.output;
    fs::path run = fs::directory_iterator(dir.path() / config)->path();
    auto summary = nlohmann::json::parse(moelab::read_file(run / "summary.json"));
    const auto& rows = summary["stages"]["report"]["rows"];
    ASSERT_EQ(rows.size(), 6u) << config;  // acc and acc_norm for HellaSwag and ARC-Easy, acc for Winogrande (as lm-eval), perplexity
    for (const auto& row : rows) {
      EXPECT_TRUE(row["full"].is_number() && row["quantized"].is_number() && row["recovered"].is_number()) << row;
      if (row["metric"] == "perplexity") EXPECT_NE(row["full"], row["quantized"]);
    }
    const auto& formats = summary["stages"]["quantize"]["formats"];
    if (std::string(config) == "quant_recovery_int4") EXPECT_EQ(formats["int3"].get<long long>() + formats["int4"].get<long long>(), 144);
    else EXPECT_EQ(formats["mxfp4"].get<long long>(), 43);
    EXPECT_EQ(summary["stages"]["alpha"]["method"], "hill") << config;
    EXPECT_TRUE(fs::exists(run / "recover" / "recovered.safetensors"));
    EXPECT_TRUE(fs::exists(run / "report" / "report.md"));
  }
}

}  // namespace
