// Checkpoints know the weights they were made from: a router checkpoint applied to another model of the
// same shapes is refused, the same model loaded in float32 or bfloat16 hashes alike, and the tensors a
// checkpoint replaces do not count.
#include "moe_model.h"
#include "moelab/lib/router_checkpoint.h"
#include "test_run.h"

#include <gmock/gmock.h>

namespace {

namespace fs = std::filesystem;
using moelab::test::error_of;
using testing::HasSubstr;

const fs::path kTiny = fs::path(MOELAB_BINARY_DIR) / "models" / "tiny-olmoe";

TEST(ContentHash, SameWeightsAnyDtypeHashAlikeAndOneChangedWeightDoesNot) {
  auto a = moelab::load_model(kTiny, torch::kCPU, torch::kFloat32);
  auto b = moelab::load_model(kTiny, torch::kCPU, torch::kBFloat16);
  EXPECT_EQ(moelab::model_content_hash(*a, {}), moelab::model_content_hash(*b, {}));
  const std::string before = moelab::model_content_hash(*a, {});
  torch::NoGradGuard no_grad;
  for (auto& [name, weight] : a->named_weights())
    if (name == "model.layers.2.mlp.experts.3.down_proj.weight") weight.mul_(1.5);
  EXPECT_NE(moelab::model_content_hash(*a, {}), before);
  EXPECT_EQ(moelab::model_content_hash(*a, {"model.layers.2.mlp.experts.3.down_proj.weight"}),
            moelab::model_content_hash(*b, {"model.layers.2.mlp.experts.3.down_proj.weight"}));
}

TEST(ContentHash, ARouterCheckpointFromAnotherModelOfTheSameShapesIsRefused) {
  moelab::test::TempDir dir;
  auto trained = moelab::load_model(kTiny, torch::kCPU, torch::kFloat32);
  std::map<int, torch::Tensor> base;
  for (int layer : {4, 5}) base[layer] = trained->router_weight(layer).detach().clone();
  {
    torch::NoGradGuard no_grad;
    trained->router_weight(5).add_(0.1);  // the training: routers move, nothing else does
  }
  const fs::path file = dir.path() / "routers.safetensors";
  moelab::save_router_checkpoint(file, *trained, {4, 5}, base, {});

  auto same = moelab::load_model(kTiny, torch::kCPU, torch::kFloat32);
  EXPECT_NO_THROW(moelab::apply_router_checkpoint(file, *same));

  auto other = moelab::load_model(kTiny, torch::kCPU, torch::kFloat32);
  {
    torch::NoGradGuard no_grad;
    for (auto& [name, weight] : other->named_weights())
      if (name == "model.layers.0.self_attn.q_proj.weight") weight.add_(0.01);
  }
  EXPECT_THAT(error_of([&] { moelab::apply_router_checkpoint(file, *other); }),
              HasSubstr(file.string() + ": made from a model with other weights"));
}

}  // namespace
