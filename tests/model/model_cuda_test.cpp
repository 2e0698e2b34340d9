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

// Top-1 against transformers' own bf16 CUDA forward on 8 x 128 positions, unpadded and left-padded
// (bf16_reference.safetensors, made by make_bf16_references.py). On these random tiny models two bf16
// implementations cannot agree on 99% of positions: transformers' bf16 itself matches its own fp32
// argmax on only 89-98% of them (H200, 2026-12-01), because the logits' top-2 margins are tiny. So the
// test asks that our bf16 is as accurate as theirs: our argmax matches the fp32 argmax at least as often
// as transformers' bf16 does, less 3 points, and matches transformers' bf16 on at least 88% of positions
// (measured: 89.8-97.0%) and 93% of those where their top-1 leads by more than 0.05 (measured: 93.6-99.1%).
TEST_P(CudaFixture, Bfloat16Top1AgreesWithTransformersBfloat16) {
  const fs::path file = kFixtures / GetParam() / "bf16_reference.safetensors";
  ASSERT_TRUE(fs::exists(file)) << "missing " << file << ": make it on the GPU box with "
                                << "`python3 tests/fixtures/models/make_bf16_references.py tests/fixtures/models`";
  auto model = moelab::load_model(kFixtures / GetParam(), torch::kCUDA, torch::kBFloat16);
  moelab::SafetensorsFile reference(file);
  const auto share = [](const torch::Tensor& hits, const torch::Tensor& where) {
    return hits.masked_select(where).to(torch::kFloat32).mean().item<double>();
  };
  for (const std::string prefix : {"", "padded_"}) {
    SCOPED_TRACE(prefix.empty() ? "unpadded" : "left-padded");
    torch::Tensor ids = reference.get(prefix + "input_ids");
    torch::Tensor mask = prefix.empty() ? torch::Tensor() : reference.get("padded_attention_mask");
    torch::Tensor real = prefix.empty() ? torch::ones(ids.sizes(), torch::kBool) : mask.to(torch::kBool);
    torch::Tensor theirs = reference.get(prefix + "bf16_argmax"), fp32 = reference.get(prefix + "fp32_argmax");
    torch::Tensor clear = real.logical_and(reference.get(prefix + "bf16_margin") > 0.05);
    ASSERT_GT(clear.sum().item<int64_t>(), 0) << file << ": no position with a " << prefix << "bf16_margin above 0.05";
    torch::Tensor ours = model->forward(ids, mask).argmax(-1).cpu();
    const double agree = share(ours.eq(theirs), real), agree_clear = share(ours.eq(theirs), clear);
    const double ours_fp32 = share(ours.eq(fp32), real), theirs_fp32 = share(theirs.eq(fp32), real);
    EXPECT_GE(ours_fp32, theirs_fp32 - 0.03) << "our bf16 strays from fp32 more than transformers' bf16 does";
    EXPECT_GE(agree, 0.88);
    EXPECT_GE(agree_clear, 0.93);
    std::cout << GetParam() << " bf16 " << (prefix.empty() ? "unpadded" : "left-padded") << ", " << real.sum().item<int64_t>()
              << " positions: argmax agreement with transformers bf16 " << agree << " (" << agree_clear << " of "
              << clear.sum().item<int64_t>() << " with their margin > 0.05); with fp32 argmax: ours " << ours_fp32
              << ", transformers bf16 " << theirs_fp32 << "\n";
  }
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

// Each fast path can be switched off ([model] fused_kernels, grouped_mm) and gives the same result: in
// float32 the same logits within 1e-5 and the same experts; in bfloat16 (where a kernel may round an
// element one unit differently and a near-tie may flip an expert) the same argmax on at least 99% of
// positions and logits as close as transformers' own bf16 run is to fp32. Left padding takes the masked path.
TEST_P(CudaFixture, FastPathsOnAndOffAgree) {
  moelab::SafetensorsFile expected(kFixtures / GetParam() / "expected.safetensors");
  torch::Tensor ids = expected.get("input_ids");
  torch::Tensor padded_ids = torch::cat({torch::zeros({ids.size(0), 2}, ids.options()), ids}, 1);
  torch::Tensor mask = torch::cat({torch::zeros({ids.size(0), 2}, torch::kInt64), torch::ones(ids.sizes(), torch::kInt64)}, 1);
  const double their_error = (expected.get("logits_bf16_cuda") - expected.get("logits")).abs().max().item<double>();
  for (torch::ScalarType dtype : {torch::kFloat32, torch::kBFloat16}) {
    auto fast = moelab::load_model(kFixtures / GetParam(), torch::kCUDA, dtype);
    auto plain = moelab::load_model(kFixtures / GetParam(), torch::kCUDA, dtype, moelab::ForwardPaths{false, false});
    for (bool padded : {false, true}) {
      SCOPED_TRACE(std::string(c10::toString(dtype)) + (padded ? ", left-padded" : ", unpadded"));
      torch::Tensor a = fast->forward(padded ? padded_ids : ids, padded ? mask : torch::Tensor()).cpu();
      torch::Tensor b = plain->forward(padded ? padded_ids : ids, padded ? mask : torch::Tensor()).cpu();
      if (padded) {
        a = a.narrow(1, 2, ids.size(1));
        b = b.narrow(1, 2, ids.size(1));
      }
      const double diff = (a - b).abs().max().item<double>();
      const double agree = a.argmax(-1).eq(b.argmax(-1)).to(torch::kFloat32).mean().item<double>();
      if (dtype == torch::kFloat32) {
        EXPECT_LE(diff, 1e-5);
        for (size_t l = 0; l < fast->routing().size(); ++l)
          EXPECT_TRUE(torch::equal(fast->routing()[l].topk_ids.cpu(), plain->routing()[l].topk_ids.cpu())) << "MoE layer " << l;
      } else {
        EXPECT_LE(diff, 2 * their_error + 0.05);
        EXPECT_GE(agree, 0.99);
      }
      std::cout << GetParam() << " " << c10::toString(dtype) << (padded ? " padded" : "") << ": fast paths on vs off, max abs diff "
                << diff << ", argmax agreement " << agree << "\n";
    }
  }
}

INSTANTIATE_TEST_SUITE_P(Architectures, CudaFixture,
                         testing::Values("olmoe", "olmoe_clip_norm", "mixtral", "qwen2_moe", "qwen3_moe", "deepseek_v2",
                                         "deepseek_v3", "deepseek_v2_yarn", "qwen3_moe_yarn", "mixtral_linear_sliding",
                                         "olmoe_dynamic_bias", "qwen2_moe_llama3_sliding"));

}  // namespace
