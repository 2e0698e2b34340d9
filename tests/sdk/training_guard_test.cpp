// No silent failure in router training and routing (issue #14): a NaN/Inf loss, gradient or router
// stops training with an error naming the step and tensor and leaves no routers.safetensors (or, with
// on_nonfinite = "skip_step", skips that step's update); collection and evaluation refuse NaN routing
// naming the layer; an interrupted finetune saves resume/ and continues from it to the same routers.
#include "moelab/moelab.h"
#include "moelab/lib/files.h"
#include "moelab/lib/interrupted.h"
#include "moelab/lib/objective_batch.h"
#include "moelab/lib/router_checkpoint.h"
#include "moelab/lib/router_trainer.h"
#include "moelab/lib/safetensors.h"
#include "moe_model.h"
#include "test_run.h"
#include "tiny_run.h"

#include <ATen/CPUGeneratorImpl.h>
#include <gmock/gmock.h>
#include <torch/optim/adamw.h>
#include <torch/serialize.h>

#include <csignal>
#include <functional>

namespace {

namespace fs = std::filesystem;
using moelab::test::TempDir;
using testing::HasSubstr;
using testing::Not;

const std::string kData = std::string(MOELAB_SOURCE_DIR) + "/configs/data";
const fs::path kTiny = fs::path(MOELAB_BINARY_DIR) / "models" / "tiny-olmoe";

// finetune with task_ce on the 64 arithmetic questions: 4 steps of 16 per epoch.
std::string finetune(const std::string& extra_train_keys = "", int batch_size = 16) {
  return "stages = [\"train\"]\n"
         "[data.questions]\nplugin = \"jsonl\"\npath = \"" + kData + "/arith_train.jsonl\"\n"
         "[task]\nplugin = \"task_ce\"\n"
         "[train]\nplugin = \"finetune\"\ndataset = \"data.questions\"\nobjective = \"task\"\nlast_layers = 2\nepochs = 2\nbatch_size = " + std::to_string(batch_size) + "\n"
         "lr = 0.05\nwarmup_steps = 0\n" + extra_train_keys;
}

// Every routers.safetensors under `dir`.
std::vector<fs::path> checkpoints_under(const fs::path& dir) {
  std::vector<fs::path> found;
  for (const auto& entry : fs::recursive_directory_iterator(dir))
    if (entry.path().filename() == "routers.safetensors") found.push_back(entry.path());
  return found;
}

// A run of an experiment's stages as the host makes them, on the tiny model (float32, CPU), with a hook
// on every metrics row (where a test interrupts training).
class HookedRun final : public moelab::test::TinyRun {
 public:
  HookedRun(const TempDir& dir, const std::string& toml, RowHook on_row = {})
      : TinyRun(moelab::test::resolve_text(dir, toml), dir.path() / "run", torch::kFloat32, std::move(on_row)) {}
};

TEST(TrainingGuard, AHugeLearningRateStopsNamingTheStepAndTensorAndWritesNoRouters) {
  TempDir dir;
  fs::path file = dir.write("ft.toml", "run_dir = \"runs\"\n" + finetune());
  auto r = moelab::test::run_command(moelab::test::runexp_binary() + " " + file.string() + " --set train.lr=1e30");
  EXPECT_EQ(r.status, 1) << r.output;
  EXPECT_THAT(r.output, testing::ContainsRegex("\\[train\\] after step [0-9]+/8: the trained router weights? model\\.layers\\.[45]\\.mlp\\.gate\\.weight "
                                               "\\(layer [45]\\).* holds? NaN/Inf; training stopped, no routers\\.safetensors written"));
  EXPECT_THAT(r.output, Not(HasSubstr("loss nan")));  // it stops before a step runs on NaN routers
  EXPECT_TRUE(checkpoints_under(dir.path() / "runs").empty());
}

TEST(TrainingGuard, AnInfWeightInTheModelStopsAtTheFirstStepNamingIt) {
  TempDir dir;
  const fs::path model = dir.path() / "model";
  fs::create_directories(model);
  for (const char* name : {"config.json", "tokenizer.json"}) fs::copy_file(kTiny / name, model / name);
  {
    moelab::SafetensorsFile weights(kTiny / "model.safetensors");
    std::vector<std::pair<std::string, torch::Tensor>> tensors;
    for (const auto& name : weights.names()) {
      torch::Tensor t = weights.get(name).clone();
      if (name == "model.layers.1.self_attn.q_proj.weight") t[3][5] = std::numeric_limits<float>::infinity();
      tensors.emplace_back(name, t);
    }
    moelab::write_safetensors(model / "model.safetensors", tensors, weights.metadata());
  }
  fs::path file = dir.write("ft.toml", "run_dir = \"runs\"\n" + finetune() + "[model]\npath = \"model\"\n");
  auto r = moelab::test::run_command(moelab::test::runexp_binary() + " " + file.string());
  EXPECT_EQ(r.status, 1) << r.output;
  EXPECT_THAT(r.output, HasSubstr("[train] step 1/8 (epoch 0): the loss is nan (task = nan)"));
  EXPECT_THAT(r.output, HasSubstr("model weights holding NaN/Inf: model.layers.1.self_attn.q_proj.weight"));
  EXPECT_THAT(r.output, HasSubstr("the first MoE layer whose router logits hold NaN/Inf in the last forward is layer 1 (model.layers.1.mlp.gate.weight)"));
  EXPECT_THAT(r.output, HasSubstr("training stopped (on_nonfinite = \"stop\")"));
  EXPECT_TRUE(checkpoints_under(dir.path() / "runs").empty());
  // skip_step skips every step; with none applied there is nothing to save either.
  r = moelab::test::run_command(moelab::test::runexp_binary() + " " + file.string() + " --set train.on_nonfinite=skip_step --set train.max_skipped_steps=3");
  EXPECT_EQ(r.status, 1) << r.output;
  EXPECT_THAT(r.output, HasSubstr("4 steps skipped, more than max_skipped_steps = 3 (steps [0,1,2,3])"));
  EXPECT_TRUE(checkpoints_under(dir.path() / "runs").empty());
}

// finetune_lm-like training on fixed random windows, with lm_ce's token losses made NaN at one step.
TEST(TrainingGuard, SkipStepSkipsTheNanStepKeepsAdamWFiniteAndTrainsOn) {
  TempDir dir;
  HookedRun run(dir, "stages = []\n[lm]\nplugin = \"lm_ce\"\n");
  moelab::RouterTraining settings;
  settings.objective = "lm";
  settings.last_layers = 2;
  settings.batch_size = 2;
  settings.lr = 0.05;
  settings.weight_decay = 0.01;
  settings.on_nonfinite = moelab::OnNonfinite::skip_step;
  settings.checkpoint_every = 0;
  torch::Tensor windows = torch::randint(run.model().info().vocab_size, {8, 12}, torch::Generator(at::detail::createCPUGenerator(7)), torch::kInt64);
  int calls = 0;
  auto batch = [&](const std::vector<std::size_t>& rows, const moelab::ObjectiveNeeds& needs) {
    torch::Tensor ids = windows.index_select(0, torch::tensor(std::vector<int64_t>(rows.begin(), rows.end())));
    moelab::ObjectiveBatch b = moelab::forward_for_objective(run.model(), ids, torch::ones_like(ids), needs);
    if (++calls == 2) b.token_loss = b.token_loss * std::numeric_limits<double>::quiet_NaN();  // step 2 of 4
    if (calls == 3) moelab::request_interrupt();  // stop after step 3 to look at AdamW's state
    return b;
  };
  const fs::path out = dir.path() / "train";
  fs::create_directories(out);
  {
    moelab::RouterTrainer trainer(settings, run, "train", moelab::need::token_loss, "train");
    EXPECT_THAT(moelab::test::error_of([&] { trainer.train({8, batch}, out, nlohmann::json::object()); }),
                HasSubstr("[train] interrupted after step 3/4"));
  }
  ASSERT_EQ(run.rows().size(), 3u);
  EXPECT_TRUE(run.rows()[1].value("skipped", false)) << run.rows()[1];
  EXPECT_FALSE(run.rows()[2].contains("skipped"));

  // AdamW took steps 1 and 3 only, and its moments are finite.
  std::vector<torch::Tensor> shapes;
  for (int l : {4, 5}) shapes.push_back(torch::zeros_like(run.model().router_weight(l)).requires_grad_(true));
  torch::optim::AdamW adamw(shapes, torch::optim::AdamWOptions(0.05));
  torch::load(adamw, (out / "resume" / "optimizer.pt").string());
  ASSERT_EQ(adamw.state().size(), 2u);
  for (const auto& [key, state] : adamw.state()) {
    const auto& s = static_cast<const torch::optim::AdamWParamState&>(*state);
    EXPECT_EQ(s.step(), 2);
    EXPECT_TRUE(torch::isfinite(s.exp_avg()).all().item<bool>());
    EXPECT_TRUE(torch::isfinite(s.exp_avg_sq()).all().item<bool>());
    EXPECT_GT(s.exp_avg_sq().sum().item<double>(), 0);
  }

  // It continues (the resumed trainer remembers the skipped step) and finishes with finite, moved routers.
  moelab::RouterTrainer trainer(settings, run, "train", moelab::need::token_loss, "train");
  nlohmann::json summary = trainer.train({8, batch}, out, nlohmann::json::object());
  EXPECT_EQ(summary["skipped_steps"], nlohmann::json({1}));
  EXPECT_EQ(summary["attempts"], 2);
  ASSERT_EQ(run.rows().size(), 4u);
  EXPECT_EQ(run.rows()[3]["step"], 3);
  EXPECT_EQ(run.rows()[3]["attempt"], 2);
  for (const auto& [layer, change] : summary["relative_router_change"].items()) EXPECT_GT(change.get<double>(), 0) << layer;
  moelab::SafetensorsFile routers(out / "routers.safetensors");
  for (const auto& name : routers.names()) EXPECT_TRUE(torch::isfinite(routers.get(name)).all().item<bool>()) << name;
  EXPECT_FALSE(fs::exists(out / "resume"));
}

TEST(TrainingGuard, SkipStepLogsTheSkippedStep) {
  TempDir dir;
  auto run = moelab::test::start_run(dir, "stages = []\n[lm]\nplugin = \"lm_ce\"\n");
  moelab::RouterTraining settings;
  settings.objective = "lm";
  settings.last_layers = 1;
  settings.batch_size = 4;
  settings.lr = 0.01;
  settings.on_nonfinite = moelab::OnNonfinite::skip_step;
  torch::Tensor windows = torch::randint(100, {8, 10}, torch::Generator(at::detail::createCPUGenerator(3)), torch::kInt64);
  int calls = 0;
  auto batch = [&](const std::vector<std::size_t>& rows, const moelab::ObjectiveNeeds& needs) {
    torch::Tensor ids = windows.index_select(0, torch::tensor(std::vector<int64_t>(rows.begin(), rows.end())));
    moelab::ObjectiveBatch b = moelab::forward_for_objective(run->model(), ids, torch::ones_like(ids), needs);
    if (++calls == 1) b.token_loss = b.token_loss * std::numeric_limits<double>::infinity();
    return b;
  };
  fs::create_directories(dir.path() / "train");
  moelab::RouterTrainer trainer(settings, *run, "train", moelab::need::token_loss, "train");
  nlohmann::json summary = trainer.train({8, batch}, dir.path() / "train", nlohmann::json::object());
  EXPECT_EQ(summary["skipped_steps"], nlohmann::json({0}));
  const std::string log = moelab::read_file(run->run_dir() / "log.txt");
  EXPECT_THAT(log, HasSubstr("!!! [train] step 1/2 (epoch 0): the loss is inf (ce = inf)"));
  EXPECT_THAT(log, HasSubstr("step skipped, its update not applied (1 of at most 10 skipped steps)"));
  EXPECT_THAT(moelab::read_file(run->run_dir() / "metrics.jsonl"), HasSubstr("\"skipped\":true"));
}

TEST(TrainingGuard, CollectionAndEvaluationRefuseNanRoutingNamingTheLayer) {
  TempDir dir;
  auto run = moelab::test::start_run(dir, "stages = []\n[q]\nplugin = \"jsonl\"\npath = \"" + kData + "/arith_train.jsonl\"\n"
                                          "[collect]\nplugin = \"collect_routing\"\ndataset = \"q\"\n"
                                          "[eval]\nplugin = \"evaluate\"\ndataset = \"q\"\n"
                                          "[eval_loglik]\nplugin = \"evaluate\"\ndataset = \"q\"\nscoring = \"loglik\"\n");
  {
    torch::NoGradGuard no_grad;
    run->model().router_weight(3)[2][7] = std::numeric_limits<float>::quiet_NaN();
  }
  for (const std::string stage : {"collect", "eval", "eval_loglik"}) {
    const fs::path out = dir.path() / stage;
    fs::create_directories(out);
    EXPECT_THAT(moelab::test::error_of([&] {
                  nlohmann::json summary;
                  run->make<moelab::Stage>(stage)->run(out, summary);
                }),
                HasSubstr("the router logits of MoE layer 3 (model.layers.3.mlp.gate.weight) are NaN/Inf"))
        << stage;
    EXPECT_FALSE(fs::exists(out / "routing_results.json") || fs::exists(out / "report.md")) << stage;
  }
}

TEST(TrainingGuard, ARouterCheckpointWithNanIsNeverApplied) {
  TempDir dir;
  auto run = moelab::test::start_run(dir, "stages = []\n");
  moelab::Model& model = run->model();
  torch::NoGradGuard no_grad;
  torch::Tensor gate = model.router_weight(5);
  const torch::Tensor base = gate.clone();
  gate[0][0] = std::numeric_limits<float>::quiet_NaN();
  moelab::save_router_checkpoint(dir.path() / "routers.safetensors", model, {5}, {{5, base}}, {});
  gate.copy_(base);
  EXPECT_THAT(moelab::test::error_of([&] { moelab::apply_router_checkpoint(dir.path() / "routers.safetensors", model); }),
              HasSubstr("routers.safetensors: router.5 (layer 5) holds NaN/Inf; a router checkpoint with them is never applied"));
  EXPECT_TRUE(torch::equal(model.router_weight(5), base));
}

// The same routers whether training runs through or stops twice and continues from resume/: on SIGINT
// after step 4 (an epoch's end) and on request_interrupt() after step 6 (mid-epoch), with periodic saves.
TEST(TrainingGuard, AnInterruptedFinetuneResumesToTheSameRouters) {
  TempDir through_dir, interrupted_dir;
  HookedRun through(through_dir, finetune());
  nlohmann::json expected = through.run_stage("train");

  const std::string toml = finetune("checkpoint_every = 3\n");
  const fs::path stage = interrupted_dir.path() / "run" / "train";
  auto steps_and_attempts = [](const HookedRun& run) {
    std::vector<std::pair<long long, long long>> out;
    for (const auto& row : run.rows()) out.emplace_back(row["step"], row["attempt"]);
    return out;
  };
  struct sigaction before {};
  sigaction(SIGINT, nullptr, &before);
  {
    HookedRun first(interrupted_dir, toml, [](const nlohmann::json& row) {
      if (row["step"] == 3) std::raise(SIGINT);
    });
    EXPECT_THAT(moelab::test::error_of([&] { first.run_stage("train"); }),
                HasSubstr("[train] interrupted after step 4/8; " + (stage / "resume").string() +
                          " holds the routers, AdamW state and data position: run the same command with --resume to continue from step 5"));
    EXPECT_EQ(steps_and_attempts(first), (std::vector<std::pair<long long, long long>>{{0, 1}, {1, 1}, {2, 1}, {3, 1}}));
  }
  struct sigaction after {};
  sigaction(SIGINT, nullptr, &after);
  EXPECT_EQ(after.sa_handler, before.sa_handler);  // the trainer's handler is gone with train()
  EXPECT_FALSE(moelab::interrupt_requested());
  EXPECT_TRUE(fs::exists(stage / "resume" / "state.safetensors"));
  EXPECT_FALSE(fs::exists(stage / "routers.safetensors"));
  {
    HookedRun second(interrupted_dir, toml, [](const nlohmann::json& row) {
      if (row["step"] == 5) moelab::request_interrupt();
    });
    EXPECT_THAT(moelab::test::error_of([&] { second.run_stage("train"); }), HasSubstr("[train] interrupted after step 6/8"));
    EXPECT_EQ(steps_and_attempts(second), (std::vector<std::pair<long long, long long>>{{4, 2}, {5, 2}}));
  }

  HookedRun third(interrupted_dir, toml);
  nlohmann::json resumed = third.run_stage("train");
  EXPECT_EQ(steps_and_attempts(third), (std::vector<std::pair<long long, long long>>{{6, 3}, {7, 3}}));
  EXPECT_EQ(resumed["resumed_from_step"], 6);
  EXPECT_EQ(resumed["attempts"], 3);
  EXPECT_FALSE(fs::exists(stage / "resume"));

  moelab::SafetensorsFile a(through_dir.path() / "run" / "train" / "routers.safetensors"), b(stage / "routers.safetensors");
  ASSERT_EQ(a.names(), b.names());
  for (const auto& name : a.names()) EXPECT_TRUE(torch::equal(a.get(name), b.get(name))) << name;
  // The epoch means count every step once, across the attempts.
  ASSERT_EQ(resumed["epochs"].size(), 2u);
  for (std::size_t e = 0; e < 2; ++e)
    for (const auto& [name, value] : expected["epochs"][e].items()) EXPECT_DOUBLE_EQ(resumed["epochs"][e][name].get<double>(), value.get<double>()) << name;
  EXPECT_EQ(resumed["router_finetuning"]["steps"], 8);
}

// A resume/ folder from another training is refused, not silently applied.
TEST(TrainingGuard, AResumeFolderOfAnotherTrainingIsRefused) {
  TempDir dir;
  {
    HookedRun first(dir, finetune(), [](const nlohmann::json& row) {
      if (row["step"] == 1) moelab::request_interrupt();
    });
    EXPECT_THAT(moelab::test::error_of([&] { first.run_stage("train"); }), HasSubstr("interrupted after step 2/8"));
  }
  HookedRun other(dir, finetune("", 8));
  EXPECT_THAT(moelab::test::error_of([&] { other.run_stage("train"); }),
              HasSubstr("resume was saved by another training: batch_size was 16, now 8; remove that folder"));
}

}  // namespace
