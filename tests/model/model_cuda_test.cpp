// The transformers fixtures on CUDA: fp32 within 1e-4 as on CPU, and bf16 within a tolerance that
// bf16's 8-bit mantissa explains. Built only with -DMOELAB_CUDA_TESTS=ON (scripts/gpu.sh).
#include "moe_model.h"
#include "moelab/lib/safetensors.h"

#include <gtest/gtest.h>
#include <torch/cuda.h>

namespace {

namespace fs = std::filesystem;
const fs::path kFixtures = fs::path(MOELAB_SOURCE_DIR) / "tests" / "fixtures" / "models";

class CudaFixture : public testing::TestWithParam<std::string> {};

TEST_P(CudaFixture, Float32MatchesTransformers) {
  ASSERT_TRUE(torch::cuda::is_available());
  auto model = moelab::load_model(kFixtures / GetParam(), torch::kCUDA, torch::kFloat32);
  moelab::SafetensorsFile expected(kFixtures / GetParam() / "expected.safetensors");
  torch::Tensor logits = model->forward(expected.get("input_ids"), {}).cpu();
  EXPECT_LE((logits - expected.get("logits")).abs().max().item<double>(), 1e-4);
}

// bf16 is judged against transformers' own bf16 run on the same inputs (logits_bf16_cuda): rounding
// near router ties can flip an expert choice in either implementation, so our distance to the fp32
// reference may be at most twice transformers' own bf16 distance (plus 0.05), and our argmax must
// agree with transformers' bf16 argmax on at least 90% of positions.
TEST_P(CudaFixture, Bfloat16IsAsCloseAsTransformersBfloat16) {
  auto model = moelab::load_model(kFixtures / GetParam(), torch::kCUDA, torch::kBFloat16);
  moelab::SafetensorsFile expected(kFixtures / GetParam() / "expected.safetensors");
  torch::Tensor fp32 = expected.get("logits"), theirs = expected.get("logits_bf16_cuda");
  torch::Tensor ours = model->forward(expected.get("input_ids"), {}).cpu();
  double our_error = (ours - fp32).abs().max().item<double>(), their_error = (theirs - fp32).abs().max().item<double>();
  EXPECT_LE(our_error, 2 * their_error + 0.05);
  double agree = ours.argmax(-1).eq(theirs.argmax(-1)).to(torch::kFloat32).mean().item<double>();
  EXPECT_GE(agree, 0.9);
  std::cout << GetParam() << " bf16: max abs error vs fp32 " << our_error << " (transformers bf16: " << their_error
            << "), argmax agreement with transformers bf16 " << agree << "\n";
}

// Unpadded rows take the fused kernel's causal mode (no mask); a left-padded copy of the same rows takes
// the masked path. Both must give the same logits at the real positions, and both match transformers.
TEST_P(CudaFixture, CausalFastPathEqualsTheMaskedPath) {
  auto model = moelab::load_model(kFixtures / GetParam(), torch::kCUDA, torch::kFloat32);
  moelab::SafetensorsFile expected(kFixtures / GetParam() / "expected.safetensors");
  torch::Tensor ids = expected.get("input_ids");
  torch::Tensor fast = model->forward(ids, {}).cpu();
  torch::Tensor padded_ids = torch::cat({torch::zeros({ids.size(0), 3}, ids.options()), ids}, 1);
  torch::Tensor mask = torch::cat({torch::zeros({ids.size(0), 3}, torch::kInt64), torch::ones(ids.sizes(), torch::kInt64)}, 1);
  torch::Tensor masked = model->forward(padded_ids, mask).cpu().narrow(1, 3, ids.size(1));
  EXPECT_LE((fast - masked).abs().max().item<double>(), 1e-4);
}

INSTANTIATE_TEST_SUITE_P(Architectures, CudaFixture,
                         testing::Values("olmoe", "olmoe_clip_norm", "mixtral", "qwen2_moe", "qwen3_moe", "deepseek_v2",
                                         "deepseek_v3", "deepseek_v2_yarn", "qwen3_moe_yarn", "mixtral_linear_sliding",
                                         "olmoe_dynamic_bias", "qwen2_moe_llama3_sliding"));

}  // namespace
