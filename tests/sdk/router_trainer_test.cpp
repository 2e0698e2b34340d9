// The RouterTrainer under both stages: router losses added to the task and LM losses train, both stages
// choose routers by one rule and write checkpoints with the same metadata; batches hold only what the
// objective needs; an objective a stage cannot serve is refused at --dry-run and at run time.
#include "moelab/moelab.h"
#include "moelab/lib/files.h"
#include "moelab/lib/objective_batch.h"
#include "moelab/lib/router_checkpoint.h"
#include "moelab/lib/router_trainer.h"
#include "moelab/lib/safetensors.h"
#include "test_run.h"

#include <gmock/gmock.h>

namespace {

namespace fs = std::filesystem;
using moelab::test::TempDir;
using testing::HasSubstr;

const std::string kData = std::string(MOELAB_SOURCE_DIR) + "/configs/data";

// finetune on multiple-choice questions and finetune_lm on text, each with a z-loss and a
// load-balancing term added to its own loss.
std::string both_stages() {
  return "stages = [\"train\", \"recover\"]\n"
         "[data.questions]\nplugin = \"jsonl\"\npath = \"" + kData + "/arith_train.jsonl\"\n"
         "[data.text]\nplugin = \"text\"\npath = \"" + kData + "/text/prose.txt\"\n"
         "[task]\nplugin = \"task_ce\"\n[lm]\nplugin = \"lm_ce\"\n"
         "[task_z]\nplugin = \"z_loss\"\ncoef = 0.01\nadd_to = \"task\"\n"
         "[task_lb]\nplugin = \"load_balancing\"\ncoef = 0.1\nadd_to = \"task_z\"\n"
         "[lm_z]\nplugin = \"z_loss\"\ncoef = 0.01\nadd_to = \"lm\"\n"
         "[lm_lb]\nplugin = \"load_balancing\"\ncoef = 0.1\nadd_to = \"lm_z\"\n"
         "[train]\nplugin = \"finetune\"\ndataset = \"data.questions\"\nobjective = \"task_lb\"\nlast_layers = 2\nepochs = 1\nbatch_size = 16\n"
         "lr = 0.05\nwarmup_steps = 0\n"
         "[recover]\nplugin = \"finetune_lm\"\ndataset = \"data.text\"\nobjective = \"lm_lb\"\nnsamples = 8\nseqlen = 24\nbatch_size = 2\nlr = 0.05\n";
}

std::vector<nlohmann::json> metrics_of(const fs::path& run_dir, const std::string& stage) {
  std::vector<nlohmann::json> rows;
  std::istringstream lines(moelab::read_file(run_dir / "metrics.jsonl"));
  for (std::string line; std::getline(lines, line);)
    if (auto row = nlohmann::json::parse(line); row["stage"] == stage) rows.push_back(row);
  return rows;
}

TEST(RouterTrainer, RouterLossesAddedToTheTaskAndLmLossesTrainUnderBothStages) {
  TempDir dir;
  auto run = moelab::test::start_run(dir, both_stages());
  run->run_stages();
  auto summary = nlohmann::json::parse(moelab::read_file(run->run_dir() / "summary.json"));
  for (const auto& [stage, task_part] : {std::pair<std::string, std::string>{"train", "task"}, {"recover", "ce"}}) {
    std::vector<nlohmann::json> rows = metrics_of(run->run_dir(), stage);
    ASSERT_EQ(rows.size(), 4u) << stage;  // 64 questions / 16, and 8 windows / 2, in the default 1 epoch
    for (const auto& row : rows) {
      EXPECT_NEAR(row["loss"].get<double>(), row[task_part].get<double>() + 0.01 * row["z_loss"].get<double>() + 0.1 * row["load_balancing"].get<double>(),
                  1e-5) << row;
      EXPECT_GT(row["load_balancing"].get<double>(), 0) << row;
    }
    EXPECT_NE(rows.front()["z_loss"], rows.back()["z_loss"]) << stage;
    for (const auto& [layer, change] : summary["stages"][stage]["relative_router_change"].items()) EXPECT_GT(change.get<double>(), 0) << stage << layer;
    EXPECT_TRUE(summary["stages"][stage]["epochs"][0].contains("load_balancing")) << stage;
  }
  // One rule for the routers: last_layers = 2 is the last two MoE layers, finetune_lm's default 0 is every one.
  EXPECT_EQ(summary["stages"]["train"]["target_layers"], nlohmann::json({4, 5}));
  EXPECT_EQ(summary["stages"]["recover"]["target_layers"], nlohmann::json({0, 1, 2, 3, 4, 5}));
  // The same checkpoint metadata from both stages (finetune_lm adds its windows).
  auto keys = [&](const std::string& stage) {
    moelab::SafetensorsFile checkpoint(run->run_dir() / stage / "routers.safetensors");
    std::set<std::string> out;
    for (const auto& [key, value] : checkpoint.metadata()) out.insert(key);
    return out;
  };
  std::set<std::string> train = keys("train"), recover = keys("recover");
  for (const char* key : {"objective", "layers", "epochs", "batch_size", "lr", "weight_decay", "warmup_steps", "grad_clip", "steps", "seed",
                          "model_fingerprint", "base_gate_fingerprint"})
    EXPECT_TRUE(train.count(key) && recover.count(key)) << key;
  recover.erase("nsamples");
  recover.erase("seqlen");
  EXPECT_EQ(train, recover);
  EXPECT_EQ(moelab::SafetensorsFile(run->run_dir() / "recover" / "routers.safetensors").metadata().at("objective"), "lm_lb");
}

TEST(RouterTrainer, TooManyLastLayersNamesTheStageAndKey) {
  TempDir dir;
  auto run = moelab::test::start_run(dir, both_stages() + "[bad]\nplugin = \"finetune\"\ndataset = \"data.questions\"\nobjective = \"task\"\n"
                                                        "last_layers = 7\n");
  EXPECT_THAT(moelab::test::error_of([&] {
                nlohmann::json summary;
                run->make<moelab::Stage>("bad")->run(dir.path(), summary);
              }),
              HasSubstr("[bad] last_layers = 7, but the model has 6 MoE layers"));
}

TEST(ObjectiveBatch, HoldsOnlyWhatTheObjectiveNeeds) {
  TempDir dir;
  auto run = moelab::test::start_run(dir, "stages = []\n");
  moelab::Model& model = run->model();
  torch::Tensor ids = torch::tensor({{1, 1, 17, 23, 40}, {5, 9, 17, 23, 40}}, torch::kInt64);
  torch::Tensor mask = torch::tensor({{0, 0, 1, 1, 1}, {1, 1, 1, 1, 1}}, torch::kInt64);
  torch::NoGradGuard no_grad;

  moelab::ObjectiveNeeds lm;
  lm.token_loss = true;
  moelab::ObjectiveBatch b = moelab::forward_for_objective(model, ids, mask, lm);
  EXPECT_FALSE(b.logits.defined() || b.hidden_states.defined() || b.last_logits.defined());
  // The model may sit on the GPU (device = "auto"): compare on the CPU.
  b.target_ids = b.target_ids.cpu();
  b.token_loss = b.token_loss.cpu();
  EXPECT_TRUE(b.routers.empty());
  ASSERT_EQ(b.token_loss.sizes(), torch::IntArrayRef({2, 5}));
  // Targets: the next token where both are real; padding and the last position have none (loss 0).
  EXPECT_TRUE(torch::equal(b.target_ids, torch::tensor({{-100, -100, 23, 40, -100}, {9, 17, 23, 40, -100}}, torch::kInt64)));
  torch::Tensor logits = model.forward(ids, mask).cpu();
  const double expected = -logits[1][2].log_softmax(0)[23].item<double>();
  EXPECT_NEAR(b.token_loss[1][2].item<double>(), expected, 1e-5);
  EXPECT_EQ(b.token_loss[0][1].item<double>(), 0.0);

  moelab::ObjectiveNeeds routing;
  routing.router_logits = routing.hidden_states = routing.choices = true;
  b = moelab::forward_for_objective(model, ids, mask, routing);
  EXPECT_FALSE(b.logits.defined() || b.token_loss.defined() || b.target_ids.defined());
  ASSERT_EQ(b.routers.size(), model.info().moe_layers.size());
  EXPECT_EQ(b.routers[0].logits.sizes(), torch::IntArrayRef({10, model.info().num_experts}));
  EXPECT_EQ(b.routers[0].topk_ids.sizes(), torch::IntArrayRef({10, model.info().top_k}));
  EXPECT_EQ(b.hidden_states.sizes(), torch::IntArrayRef({2, 5, model.info().hidden_size}));
  // The last real token's logits are the same read off a last-only forward or every position.
  routing.token_logits = true;
  moelab::ObjectiveBatch every = moelab::forward_for_objective(model, ids, mask, routing);
  EXPECT_TRUE(torch::allclose(b.last_logits.cpu(), every.last_logits.cpu(), 1e-5, 1e-5));
  EXPECT_TRUE(torch::allclose(every.logits.cpu(), logits, 1e-6, 1e-6));
}

// finetune_lm's windows have no answer options, so task_ce cannot train there, alone or under another objective.
TEST(ObjectiveNeeds, AStageThatCannotGiveANeedFailsAtDryRunNamingObjectiveNeedAndStage) {
  TempDir dir;
  const std::string base = "stages = [\"recover\"]\n[text]\nplugin = \"text\"\npath = \"" + kData + "/text/prose.txt\"\n"
                           "[task]\nplugin = \"task_ce\"\n[lb]\nplugin = \"load_balancing\"\nadd_to = \"task\"\n"
                           "[recover]\nplugin = \"finetune_lm\"\ndataset = \"text\"\nobjective = \"task\"\nnsamples = 4\nseqlen = 32\n";
  fs::path file = dir.write("bad.toml", base);
  auto r = moelab::test::run_command(moelab::test::runexp_binary() + " " + file.string() + " --dry-run");
  EXPECT_NE(r.status, 0) << r.output;
  EXPECT_THAT(r.output, HasSubstr("objective [task] (task_ce) needs choices (last-token logits, answer options and labels of "
                                  "multiple-choice data), which stage [recover] (finetune_lm) cannot give"));
  r = moelab::test::run_command(moelab::test::runexp_binary() + " " + file.string() + " --dry-run --set recover.objective=lb");
  EXPECT_NE(r.status, 0) << r.output;
  EXPECT_THAT(r.output, HasSubstr("objective [task] (task_ce, used by [lb]) needs choices"));
  // The same refusal when a stage is made without runexp, before any training.
  auto run = moelab::test::start_run(dir, base);
  EXPECT_THAT(moelab::test::error_of([&] {
                fs::create_directories(dir.path() / "out");
                nlohmann::json summary;
                run->make<moelab::Stage>("recover")->run(dir.path() / "out", summary);
              }),
              HasSubstr("objective [task] needs choices"));
  // finetune gives everything; objectives that use each other in a cycle are refused.
  dir.write("ok.toml", "stages = [\"train\"]\n[q]\nplugin = \"jsonl\"\npath = \"" + kData + "/arith_train.jsonl\"\n[task]\nplugin = \"task_ce\"\n"
                       "[lb]\nplugin = \"load_balancing\"\nadd_to = \"task\"\n[train]\nplugin = \"finetune\"\ndataset = \"q\"\nobjective = \"lb\"\n");
  r = moelab::test::run_command(moelab::test::runexp_binary() + " " + (dir.path() / "ok.toml").string() + " --dry-run");
  EXPECT_EQ(r.status, 0) << r.output;
  fs::path cycle = dir.write("cycle.toml", moelab::read_file(dir.path() / "ok.toml") + "[z]\nplugin = \"z_loss\"\nadd_to = \"lb\"\n");
  r = moelab::test::run_command(moelab::test::runexp_binary() + " " + cycle.string() + " --dry-run --set lb.add_to=z");
  EXPECT_NE(r.status, 0) << r.output;
  EXPECT_THAT(r.output, HasSubstr("objectives use each other in a cycle: [lb] -> [z] -> [lb]"));
}

}  // namespace
