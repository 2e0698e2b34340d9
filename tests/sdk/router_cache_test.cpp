// Router training that skips what cannot change (issue #15): the model starts a forward at a layer from
// that layer's captured input with the full forward's logits and routing; with cache_hidden the trainer
// runs the layers before the first trained one in epoch 1 only and ends at the routers of the uncached
// path; frozen weights take no gradient; reg_grad_norm is taken on step 0 and every
// reg_grad_norm_every steps and its zero-gradient warning still fires.
#include "moelab/moelab.h"
#include "moelab/lib/objective_batch.h"
#include "moelab/lib/router_checkpoint.h"
#include "moelab/lib/router_trainer.h"
#include "moelab/lib/safetensors.h"
#include "moe_model.h"
#include "test_run.h"
#include "tiny_run.h"

#include <ATen/CPUGeneratorImpl.h>
#include <gmock/gmock.h>
#include <torch/cuda.h>

#include <map>

namespace {

namespace fs = std::filesystem;
using moelab::test::TempDir;
using testing::HasSubstr;
using torch::Tensor;

const std::string kData = std::string(MOELAB_SOURCE_DIR) + "/configs/data";

// The tiny model (6 MoE layers, float32 on the CPU) for an experiment given as TOML.
class TinyCpuRun : public moelab::test::TinyRun {
 public:
  TinyCpuRun(const TempDir& dir, const std::string& toml, const std::vector<std::string>& overrides = {})
      : TinyRun(moelab::test::resolve_text(dir, toml, overrides), dir.path() / "run", torch::kFloat32) {}
};

double max_difference(const Tensor& a, const Tensor& b) { return (a.to(torch::kFloat64) - b.to(torch::kFloat64)).abs().max().item<double>(); }

TEST(RouterCache, AForwardStartedAtALayerFromItsCapturedInputHasTheFullForwardsLogitsAndRouting) {
  TempDir dir;
  TinyCpuRun run(dir, "stages = []\n");
  moelab::Model& model = run.model();
  torch::NoGradGuard no_grad;
  // Row 0 unpadded, row 1 left-padded, row 2 right-padded.
  Tensor ids = torch::randint(2, 1000, {3, 7}, torch::Generator(at::detail::createCPUGenerator(11)), torch::kInt64);
  Tensor mask = torch::ones({3, 7}, torch::kInt64);
  mask.index_put_({1, torch::indexing::Slice(0, 2)}, 0);
  mask.index_put_({2, torch::indexing::Slice(5, 7)}, 0);
  ids.masked_fill_(mask.eq(0), static_cast<int64_t>(model.info().pad_token_id));

  Tensor captured;
  int captures = 0, starts = 0;
  moelab::LayerInputHooks capture;
  capture.layer = 3;
  capture.capture = [&](const Tensor& input_ids, const Tensor& attention_mask, const Tensor& input) {
    ++captures;
    EXPECT_TRUE(torch::equal(input_ids, ids));
    EXPECT_TRUE(torch::equal(attention_mask, mask.to(torch::kBool)));
    captured = input.clone();
  };
  ASSERT_TRUE(model.set_layer_input_hooks(capture));
  const Tensor full = model.forward(ids, mask);
  const std::vector<moelab::RouterTrace> full_routing = model.routing();
  const Tensor full_hidden = model.hidden_states().clone();
  ASSERT_EQ(captures, 1);
  ASSERT_EQ(captured.sizes(), torch::IntArrayRef({3, 7, 64}));

  // Padding positions of the given input may hold anything finite.
  Tensor given = captured.masked_fill(mask.eq(0).unsqueeze(-1), 7.0);
  moelab::LayerInputHooks start = capture;
  start.start = [&](const Tensor&, const Tensor&) {
    ++starts;
    return given;
  };
  ASSERT_TRUE(model.set_layer_input_hooks(start));
  const Tensor started = model.forward(ids, mask);
  EXPECT_EQ(starts, 1);
  EXPECT_EQ(captures, 1);  // a started forward shows no input
  const Tensor real = mask.eq(1);
  // The padding rows route to experts too, so the experts' matmuls see other row counts than in the full
  // forward, and a BLAS may block them differently (MKL does, OpenBLAS here does not): real tokens then
  // differ by float32 rounding, not more.
  constexpr double kRealTokenTolerance = 1e-5;
  EXPECT_LT(max_difference(started.index({real}), full.index({real})), kRealTokenTolerance);
  EXPECT_LT(max_difference(model.hidden_states().index({real}), full_hidden.index({real})), kRealTokenTolerance);
  const Tensor real_rows = real.reshape(-1);
  ASSERT_EQ(model.routing().size(), 3u);
  for (std::size_t j = 0; j < 3; ++j) {
    const moelab::RouterTrace& trace = model.routing()[j];
    const moelab::RouterTrace& expected = full_routing[j + 3];
    EXPECT_EQ(trace.layer, static_cast<int>(j) + 3);
    EXPECT_LT(max_difference(trace.logits.index({real_rows}), expected.logits.index({real_rows})), kRealTokenTolerance) << trace.layer;
    EXPECT_TRUE(torch::equal(trace.topk_ids.index({real_rows}), expected.topk_ids.index({real_rows}))) << trace.layer;
    EXPECT_LT(max_difference(trace.topk_weights.index({real_rows}), expected.topk_weights.index({real_rows})), kRealTokenTolerance) << trace.layer;
  }
  // last_only picks each row's last real token from the started forward too.
  EXPECT_LT(max_difference(model.forward(ids, mask, nullptr, /*last_only=*/true).squeeze(1),
                           full.index({torch::arange(3), torch::tensor({6, 6, 4}, torch::kInt64)})),
            kRealTokenTolerance);
  EXPECT_EQ(starts, 2);

  // An undefined input runs every layer (and shows layer 3's input); a KV-cache forward asks nothing.
  start.start = [&](const Tensor&, const Tensor&) {
    ++starts;
    return Tensor();
  };
  model.set_layer_input_hooks(start);
  EXPECT_LT(max_difference(model.forward(ids, mask), full), 1e-6);
  EXPECT_EQ(model.routing().size(), 6u);
  EXPECT_EQ(captures, 2);
  moelab::KVCache cache;
  model.forward(ids, mask, &cache);
  EXPECT_EQ(starts, 3);
  EXPECT_EQ(captures, 2);

  // Errors name the layer and the shapes.
  start.start = [&](const Tensor&, const Tensor&) { return torch::zeros({3, 7, 5}); };
  model.set_layer_input_hooks(start);
  EXPECT_THAT(moelab::test::error_of([&] { model.forward(ids, mask); }),
              HasSubstr("layer input hooks: the input given for layer 3 is [3, 7, 5], expected [3, 7, 64]"));
  moelab::LayerInputHooks beyond;
  beyond.layer = 6;
  EXPECT_THAT(moelab::test::error_of([&] { model.set_layer_input_hooks(beyond); }),
              HasSubstr("layer input hooks: layer 6 is not a decoder layer of this 6-layer model"));
  // Removed: every layer runs and no hook is asked.
  model.set_layer_input_hooks({});
  model.forward(ids, mask);
  EXPECT_EQ(model.routing().size(), 6u);
  EXPECT_EQ(starts, 3);
  EXPECT_EQ(captures, 2);
}

// finetune (left-padded questions, reshuffled every epoch) with task CE, a z-loss and load balancing
// (which reads every MoE layer's routing) on the last 2 layers, and finetune_lm with lm_ce and a z-loss on
// the last 3; 3 epochs each.
std::string three_epochs() {
  return "stages = [\"train\", \"recover\"]\n"
         "[data.questions]\nplugin = \"jsonl\"\npath = \"" + kData + "/arith_train.jsonl\"\n"
         "[data.text]\nplugin = \"text\"\npath = \"" + kData + "/text/prose.txt\"\n"
         "[task]\nplugin = \"task_ce\"\n[lm]\nplugin = \"lm_ce\"\n"
         "[task_z]\nplugin = \"z_loss\"\ncoef = 0.01\nadd_to = \"task\"\n"
         "[task_lb]\nplugin = \"load_balancing\"\ncoef = 0.1\nadd_to = \"task_z\"\n"
         "[lm_z]\nplugin = \"z_loss\"\ncoef = 0.01\nadd_to = \"lm\"\n"
         "[train]\nplugin = \"finetune\"\ndataset = \"data.questions\"\nobjective = \"task_lb\"\nlast_layers = 2\nepochs = 3\nbatch_size = 16\n"
         "lr = 0.05\nwarmup_steps = 0\n"
         "[recover]\nplugin = \"finetune_lm\"\ndataset = \"data.text\"\nobjective = \"lm_z\"\nlast_layers = 3\nepochs = 3\nnsamples = 8\n"
         "seqlen = 24\nbatch_size = 2\nlr = 0.05\n";
}

struct StageResult {
  nlohmann::json summary;
  std::vector<nlohmann::json> rows;
  std::map<int, long long> layer_forwards;  // MoE layer -> forwards that ran it
  std::map<std::string, Tensor> routers;    // routers.safetensors
};

std::map<std::string, StageResult> train_both(bool cache_hidden) {
  TempDir dir;
  const std::string flag = cache_hidden ? "true" : "false";
  TinyCpuRun run(dir, three_epochs(), {"train.cache_hidden=" + flag, "recover.cache_hidden=" + flag});
  std::map<std::string, StageResult> out;
  for (const std::string stage : {"train", "recover"}) {
    StageResult& result = out[stage];
    run.model().set_moe_input_observer([&](int layer, const Tensor&, const Tensor&) { ++result.layer_forwards[layer]; });
    const std::size_t before = run.rows().size();
    result.summary = run.run_stage(stage);
    result.rows.assign(run.rows().begin() + static_cast<std::ptrdiff_t>(before), run.rows().end());
    moelab::SafetensorsFile routers(dir.path() / "run" / stage / "routers.safetensors");
    for (const auto& name : routers.names()) result.routers[name] = routers.get(name).clone();
  }
  run.model().set_moe_input_observer({});
  return out;
}

TEST(RouterCache, CachedTrainingSkipsTheFrozenLayersAfterEpochOneAndEndsAtTheUncachedRouters) {
  std::map<std::string, StageResult> cached = train_both(true), uncached = train_both(false);
  for (const auto& [stage, first_trained] : {std::pair<std::string, int>{"train", 4}, {"recover", 3}}) {
    const StageResult &on = cached.at(stage), &off = uncached.at(stage);
    // 12 steps (4 per epoch); with the cache the layers before the first trained one ran in epoch 1 only.
    ASSERT_EQ(on.rows.size(), 12u) << stage;
    ASSERT_EQ(off.rows.size(), 12u) << stage;
    for (int layer = 0; layer < 6; ++layer) {
      EXPECT_EQ(off.layer_forwards.at(layer), 12) << stage << " layer " << layer;
      EXPECT_EQ(on.layer_forwards.at(layer), layer < first_trained ? 4 : 12) << stage << " layer " << layer;
    }
    EXPECT_EQ(on.summary["cache_hidden"]["layer"], first_trained) << stage;
    EXPECT_EQ(on.summary["cache_hidden"]["steps_started_at_layer"], 8) << stage;
    EXPECT_GT(on.summary["cache_hidden"]["device_mib"].get<double>(), 0) << stage;
    EXPECT_FALSE(off.summary.contains("cache_hidden")) << stage;
    EXPECT_EQ(on.summary["epoch_tokens_per_second"].size(), 3u) << stage;
    // Every loss part of every step (load balancing reads the routing of the skipped layers) and the end routers.
    for (std::size_t i = 0; i < on.rows.size(); ++i)
      for (const auto& [field, value] : off.rows[i].items())
        if (value.is_number()) EXPECT_NEAR(on.rows[i].at(field).get<double>(), value.get<double>(), 1e-5) << stage << " step " << i << " " << field;
    ASSERT_EQ(on.routers.size(), off.routers.size());
    for (const auto& [name, router] : off.routers) EXPECT_LT(max_difference(on.routers.at(name), router), 1e-5) << stage << " " << name;
    for (const auto& [layer, change] : on.summary["relative_router_change"].items()) EXPECT_GT(change.get<double>(), 1e-3) << stage << layer;
  }
  EXPECT_TRUE(cached.at("train").rows.back().contains("load_balancing"));
}

// An objective with a reg term that does not depend on the routers: the public RoMA script's failure.
class ConstantReg final : public moelab::Objective {
 public:
  ConstantReg() : Objective(moelab::need::token_loss) {}
  moelab::LossTerms compute(const moelab::ObjectiveBatch& batch) override {
    Tensor real = batch.target_ids.ne(-100);
    Tensor task = batch.token_loss.sum() / real.sum();
    Tensor reg = torch::tensor(0.25, task.options().requires_grad(false));
    return {task + reg, {{"task", task}, {"reg", reg}, {"lambda", torch::tensor(1.0)}}};
  }
};

class RunWithConstantReg final : public moelab::test::TinyRun {
 public:
  explicit RunWithConstantReg(const TempDir& dir)
      : TinyRun(moelab::test::resolve_text(dir, "stages = []\n[lm]\nplugin = \"lm_ce\"\n"), dir.path() / "run", torch::kFloat32) {}
  std::shared_ptr<moelab::Plugin> make_component(const std::string& id, moelab::Kind kind) override {
    if (id == "constant_reg") return std::make_shared<ConstantReg>();
    return TinyRun::make_component(id, kind);
  }
};

// Eight fixed random windows of 12 tokens, `changed_after` batches later one of them another window.
moelab::TrainingData windows_of(moelab::Model& model, int changed_after = -1) {
  auto windows = std::make_shared<Tensor>(torch::randint(2, 1000, {8, 12}, torch::Generator(at::detail::createCPUGenerator(5)), torch::kInt64));
  auto calls = std::make_shared<int>(0);
  return {8, [&model, windows, calls, changed_after](const std::vector<std::size_t>& rows, const moelab::ObjectiveNeeds& needs) {
            if ((*calls)++ == changed_after) (*windows)[3][5] = (*windows)[3][5] % 999 + 1;
            Tensor ids = windows->index_select(0, torch::tensor(std::vector<int64_t>(rows.begin(), rows.end())));
            return moelab::forward_for_objective(model, ids, torch::ones_like(ids), needs);
          }};
}

moelab::RouterTraining three_epochs_of(const std::string& objective) {
  moelab::RouterTraining settings;
  settings.objective = objective;
  settings.last_layers = 2;
  settings.epochs = 3;
  settings.batch_size = 2;
  settings.lr = 0.05;
  settings.checkpoint_every = 0;
  return settings;
}

TEST(RouterCache, RegGradNormIsTakenOnStepZeroAndEveryNStepsAndAConstantRegIsShouted) {
  TempDir dir;
  RunWithConstantReg run(dir);
  moelab::RouterTraining settings = three_epochs_of("constant_reg");
  settings.reg_grad_norm_every = 5;
  const fs::path out = dir.path() / "train";
  fs::create_directories(out);
  moelab::RouterTrainer trainer(settings, run, "train", moelab::need::token_loss, "train");
  // Only the trained routers take gradients: every other weight, the stacked experts included, is frozen.
  std::set<std::string> trained;
  for (int l : trainer.layers()) trained.insert(moelab::router_tensor_name(run.model(), l));
  for (const auto& [name, weight] : run.model().named_weights()) EXPECT_EQ(weight.requires_grad(), trained.count(name) == 1) << name;
  for (int l : run.model().info().moe_layers) {
    const moelab::ExpertWeights experts = run.model().expert_weights(l);
    for (const Tensor& w : {experts.gate, experts.up, experts.down}) EXPECT_FALSE(w.requires_grad()) << "layer " << l;
  }
  testing::internal::CaptureStderr();
  trainer.train(windows_of(run.model()), out, nlohmann::json::object());
  const std::string log = testing::internal::GetCapturedStderr();
  ASSERT_EQ(run.rows().size(), 12u);
  for (const auto& row : run.rows()) {
    const long long step = row["step"];
    EXPECT_EQ(row.contains("reg_grad_norm"), step % 5 == 0) << row;
    if (row.contains("reg_grad_norm")) EXPECT_EQ(row["reg_grad_norm"].get<double>(), 0.0);
  }
  for (const long long step : {0, 5, 10})
    EXPECT_THAT(log, HasSubstr(fmt::format("!!! step {}: the regularizer has no gradient on the routers", step)));
  EXPECT_THAT(log, testing::Not(HasSubstr("!!! step 1:")));
  for (const auto& [name, weight] : run.model().named_weights())
    if (!trained.count(name)) EXPECT_FALSE(weight.grad().defined()) << name;
}

TEST(RouterCache, RegGradNormEveryDefaultsTo50AndTheOldNameIsGone) {
  TempDir dir;
  const std::string toml = "stages = [\"train\"]\n[data.questions]\nplugin = \"jsonl\"\npath = \"" + kData + "/arith_train.jsonl\"\n"
                           "[task]\nplugin = \"task_ce\"\n[train]\nplugin = \"finetune\"\ndataset = \"data.questions\"\nobjective = \"task\"\n";
  const moelab::ResolvedExperiment experiment = moelab::test::resolve_text(dir, toml);
  const moelab::RouterTraining settings = moelab::router_training_options({5, 3, 32, 2000, 7e-5, 0.01})
                                              .read(moelab::Config(experiment.components.at("train").config));
  EXPECT_EQ(settings.reg_grad_norm_every, 50);
  EXPECT_TRUE(settings.cache_hidden);
  EXPECT_EQ(settings.cache_hidden_device_gib, 16.0);
  EXPECT_THAT(moelab::test::error_of([&] { moelab::test::resolve_text(dir, toml + "reg_grad_every = 5\n"); }), HasSubstr("reg_grad_every"));
}

TEST(RouterCache, AnExampleWhoseTokensChangeAfterEpochOneIsRefusedNamingTheKey) {
  TempDir dir;
  TinyCpuRun run(dir, "stages = []\n[lm]\nplugin = \"lm_ce\"\n");
  const fs::path out = dir.path() / "train";
  fs::create_directories(out);
  moelab::RouterTrainer trainer(three_epochs_of("lm"), run, "train", moelab::need::token_loss, "train");
  EXPECT_THAT(moelab::test::error_of([&] { trainer.train(windows_of(run.model(), /*changed_after=*/5), out, nlohmann::json::object()); }),
              HasSubstr("cache_hidden: example 3 has other tokens than when its layer 4 input was kept (12 real tokens then, 12 now); the "
                        "stage's batches must give an example the same tokens every time, or set cache_hidden = false"));
}

// On CUDA: the cache on the device, in pinned host memory (a zero budget) and off end at the same routers.
class CudaRun final : public moelab::test::TinyRun {
 public:
  explicit CudaRun(const TempDir& dir)
      : TinyRun(moelab::test::resolve_text(dir, "stages = []\n[lm]\nplugin = \"lm_ce\"\n"), dir.path() / "run", torch::kFloat32) {}
  moelab::Model& model() override {
    if (!model_) model_ = moelab::load_model(fs::path(MOELAB_BINARY_DIR) / "models" / "tiny-olmoe", torch::kCUDA, torch::kFloat32);
    return *model_;
  }

 private:
  std::unique_ptr<moelab::Model> model_;
};

TEST(RouterCache, OnCudaTheDevicePinnedHostAndUncachedPathsEndAtTheSameRouters) {
  if (!torch::cuda::is_available()) GTEST_SKIP() << "needs a CUDA device";
  std::vector<std::map<std::string, Tensor>> ends;
  std::vector<nlohmann::json> summaries;
  for (const auto& [cache, budget] : {std::pair<bool, double>{false, 16}, {true, 16}, {true, 0}}) {
    TempDir dir;
    CudaRun run(dir);
    moelab::RouterTraining settings = three_epochs_of("lm");
    settings.cache_hidden = cache;
    settings.cache_hidden_device_gib = budget;
    fs::create_directories(dir.path() / "train");
    moelab::RouterTrainer trainer(settings, run, "train", moelab::need::token_loss, "train");
    summaries.push_back(trainer.train(windows_of(run.model()), dir.path() / "train", nlohmann::json::object()));
    moelab::SafetensorsFile routers(dir.path() / "train" / "routers.safetensors");
    ends.emplace_back();
    for (const auto& name : routers.names()) ends.back()[name] = routers.get(name).cpu();
  }
  EXPECT_GT(summaries[1]["cache_hidden"]["device_mib"].get<double>(), 0);
  EXPECT_EQ(summaries[1]["cache_hidden"]["pinned_host_mib"].get<double>(), 0);
  EXPECT_EQ(summaries[2]["cache_hidden"]["device_mib"].get<double>(), 0);
  EXPECT_GT(summaries[2]["cache_hidden"]["pinned_host_mib"].get<double>(), 0);
  for (std::size_t i : {1, 2})
    for (const auto& [name, router] : ends[0]) EXPECT_LT(max_difference(ends[i].at(name), router), 1e-5) << i << " " << name;
}

}  // namespace
