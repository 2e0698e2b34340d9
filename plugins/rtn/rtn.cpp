// Round-to-nearest weight quantization, applied in place as fake-quant: each row of a matching
// weight is split into groups of `group_size` columns with an asymmetric scale and zero point, by the
// quantize stage's INT rule (moelab/lib/quant.h: the range includes 0, the scale is float16).
#include "moelab/moelab.h"
#include "moelab/lib/log.h"
#include "moelab/lib/quant.h"

#include <regex>

namespace {

struct Settings {
  long long bits, group_size;
  std::string match;
};

const moelab::Options<Settings>& options() {
  static const auto o =
      moelab::Options<Settings>("rtn", moelab::Kind::transform, "0.2.0",
                                "round-to-nearest asymmetric INTn fake-quant per group, range including 0 (as the quantize stage)")
          .integer("bits", &Settings::bits, 4, "bits per weight").within(2, 8)
          .integer("group_size", &Settings::group_size, 128, "columns sharing one scale and zero point").at_least(1)
          .string("match", &Settings::match, "experts\\.", "regex over checkpoint names selecting the weights");
  return o;
}

class RoundToNearest final : public moelab::Transform {
 public:
  RoundToNearest(const moelab::Config& config, moelab::RunContext&) : settings_(options().read(config)), match_(settings_.match) {}

  nlohmann::json apply(moelab::NamedTensors& weights) override {
    long long matrices = 0, elements = 0;
    double squared_error = 0;
    torch::NoGradGuard no_grad;
    for (auto& [name, weight] : weights) {
      if (weight.dim() != 2 || !std::regex_search(name, match_)) continue;
      torch::Tensor q = quantize(weight.to(torch::kFloat32));
      squared_error += (q - weight.to(torch::kFloat32)).pow(2).sum().item<double>();
      weight.copy_(q);
      ++matrices;
      elements += weight.numel();
    }
    if (matrices == 0) moelab::log::warn("rtn: no 2-D weight matches '{}'", settings_.match);
    return {{"matrices", matrices}, {"bits", settings_.bits}, {"group_size", settings_.group_size},
            {"rmse", elements ? std::sqrt(squared_error / elements) : 0.0}};
  }

  // Fake-quantizes [rows, cols]. The last group of a row may be shorter: it is padded with copies of its
  // last column, which changes neither its range nor any other element's rounding.
  torch::Tensor quantize(const torch::Tensor& w) const {
    const long long cols = w.size(1), group = settings_.group_size, padded = (cols + group - 1) / group * group;
    torch::Tensor padded_w = padded == cols ? w : torch::cat({w, w.narrow(1, cols - 1, 1).expand({w.size(0), padded - cols})}, 1);
    const int bits = static_cast<int>(settings_.bits);
    return moelab::fake_quantize_int(padded_w, moelab::fit_int_grids(padded_w, group, bits), bits).narrow(1, 0, cols);
  }

 private:
  Settings settings_;
  std::regex match_;
};

}  // namespace

MOELAB_PLUGIN(options, RoundToNearest)
