// Quantization formats: packed round trips are exact and within each format's error bound, the packed
// sizes are what the formats promise, and known values encode as the OCP MX tables say.
#include "moelab/moelab.h"
#include "moelab/lib/quant.h"

#include <gtest/gtest.h>

namespace {

using moelab::QuantFormat;
using torch::Tensor;

Tensor sample_weights() {
  torch::manual_seed(11);
  Tensor w = torch::randn({16, 128}) * 0.05;
  w[3][5] = 0.9;    // an outlier in one group
  w[7].zero_();     // an all-zero row
  w[9].narrow(0, 32, 32).fill_(-0.02);
  return w;
}

// Largest error each element may have, given its group's grid.
Tensor error_bound(const Tensor& w, const moelab::QuantGrids& grids, QuantFormat format) {
  Tensor scale = grids.scale.repeat_interleave(w.size(1) / grids.scale.size(1), 1);
  Tensor m = w.abs() / scale;
  switch (format) {
    case QuantFormat::int3:
    case QuantFormat::int4: return scale / 2;
    case QuantFormat::mxfp4: {
      Tensor half_gap = torch::where(m < 2, torch::full_like(m, 0.25), torch::where(m < 4, torch::full_like(m, 0.5), torch::ones_like(m)));
      return torch::where(m > 6, m - 6, half_gap) * scale;
    }
    case QuantFormat::mxfp8: {
      Tensor relative = torch::where(m < std::ldexp(1.0, -6), torch::full_like(m, std::ldexp(1.0, -10)), m * std::ldexp(1.0, -4));
      return torch::where(m > 448, m - 448, relative) * scale;
    }
  }
  return Tensor();
}

class Formats : public testing::TestWithParam<std::string> {};

TEST_P(Formats, PackedRoundTripIsExactAndWithinTheErrorBound) {
  const moelab::QuantSpec spec{moelab::quant_format(GetParam()), 64};
  Tensor w = sample_weights();
  moelab::QuantGrids grids = moelab::fit_grids(w, spec);
  Tensor q = moelab::fake_quantize(w, grids, spec);
  EXPECT_TRUE(((q - w).abs() <= error_bound(w, grids, spec.format) + 1e-7).all().item<bool>()) << GetParam();
  EXPECT_TRUE(q[7].eq(0).all().item<bool>());
  moelab::PackedMatrix packed = moelab::pack(q, grids, spec);
  EXPECT_TRUE(torch::equal(moelab::unpack(packed), q)) << GetParam();
  const long long n = w.numel();
  const std::map<QuantFormat, long long> expected = {{QuantFormat::int4, n / 2 + 3 * n / 64},
                                                    {QuantFormat::int3, 3 * n / 8 + 3 * n / 64},
                                                    {QuantFormat::mxfp4, n / 2 + n / 32},
                                                    {QuantFormat::mxfp8, n + n / 32}};
  EXPECT_EQ(packed.bytes(), expected.at(spec.format));
  // Fewer bits, larger error: every format is far better than zeroing the weights.
  EXPECT_LT((q - w).norm().item<double>(), 0.3 * w.norm().item<double>());
}

INSTANTIATE_TEST_SUITE_P(Quant, Formats, testing::Values("int3", "int4", "mxfp4", "mxfp8"));

TEST(Formats, Mxfp4EncodesTheOcpTable) {
  const moelab::QuantSpec spec{QuantFormat::mxfp4, 32};
  // Block max 6: shared scale 2^(floor(log2 6) - 2) = 1, so these values are exact E2M1 points.
  std::vector<float> values = {6, -0.5, 1.5, 3, 0, -4, 2, 1};
  values.resize(32, 0.0f);
  Tensor w = torch::tensor(values).unsqueeze(0);
  moelab::QuantGrids grids = moelab::fit_grids(w, spec);
  EXPECT_EQ(grids.scale.item<float>(), 1.0f);
  moelab::PackedMatrix p = moelab::pack(moelab::fake_quantize(w, grids, spec), grids, spec);
  // Codes: 6 -> 0b0111, -0.5 -> 0b1001, 1.5 -> 0b0011, 3 -> 0b0101; two per byte, the first in the low half.
  EXPECT_EQ(p.codes[0][0].item<int>(), 0x7 | (0x9 << 4));
  EXPECT_EQ(p.codes[0][1].item<int>(), 0x3 | (0x5 << 4));
  EXPECT_EQ(p.scales[0][0].item<int>(), 127);  // E8M0: 2^0
  EXPECT_TRUE(torch::equal(moelab::unpack(p), w));
}

TEST(Formats, Mxfp8RoundsToThreeMantissaBitsAndSaturatesAt448) {
  const moelab::QuantSpec spec{QuantFormat::mxfp8, 32};
  std::vector<float> values(32, 0.0f);
  values[0] = 448;     // block max: scale 2^(8 - 8) = 1
  values[1] = 1.0625;  // halfway between 1 and 1.125: rounds to even mantissa, 1
  values[2] = 1.1875;  // 1.125 + 0.0625: halfway, rounds to 1.25
  values[3] = -0.001;  // subnormal: multiple of 2^-9
  Tensor w = torch::tensor(values).unsqueeze(0);
  moelab::QuantGrids grids = moelab::fit_grids(w, spec);
  Tensor q = moelab::fake_quantize(w, grids, spec);
  EXPECT_FLOAT_EQ(q[0][0].item<float>(), 448.0f);
  EXPECT_FLOAT_EQ(q[0][1].item<float>(), 1.0f);
  EXPECT_FLOAT_EQ(q[0][2].item<float>(), 1.25f);
  EXPECT_FLOAT_EQ(q[0][3].item<float>(), -std::ldexp(1.0f, -9));
  EXPECT_TRUE(torch::equal(moelab::unpack(moelab::pack(q, grids, spec)), q));
}

TEST(Formats, UnknownNamesAndGroupsThatDoNotDivideAreClearErrors) {
  EXPECT_THROW(moelab::quant_format("fp4"), std::runtime_error);
  try {
    moelab::fit_grids(torch::randn({4, 100}), {QuantFormat::mxfp4, 128});
    FAIL();
  } catch (const std::runtime_error& e) {
    EXPECT_NE(std::string(e.what()).find("OCP MX blocks are 32"), std::string::npos);
  }
}

}  // namespace
