// Round-to-nearest weight quantization, applied in place as fake-quant: each row of a matching
// weight is split into groups of `group_size` columns with an asymmetric scale and zero point.
#include "moelab/moelab.h"
#include "moelab/lib/log.h"

#include <regex>

namespace {

struct Settings {
  long long bits, group_size;
  std::string match;
};

const moelab::Options<Settings>& options() {
  static const auto o =
      moelab::Options<Settings>("rtn", moelab::Kind::transform, "0.1.0", "round-to-nearest asymmetric INTn fake-quant, per group")
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

  // Fake-quantizes [rows, cols]; the last group of a row may be shorter.
  torch::Tensor quantize(const torch::Tensor& w) const {
    const long long cols = w.size(1), padded = (cols + settings_.group_size - 1) / settings_.group_size * settings_.group_size;
    torch::Tensor padded_w = padded == cols ? w : torch::cat({w, w.narrow(1, cols - 1, 1).expand({w.size(0), padded - cols})}, 1);
    torch::Tensor g = padded_w.reshape({w.size(0), -1, settings_.group_size});
    const double levels = static_cast<double>((1LL << settings_.bits) - 1);
    torch::Tensor lo = std::get<0>(g.min(-1, true)), hi = std::get<0>(g.max(-1, true));
    torch::Tensor scale = ((hi - lo) / levels).clamp_min(1e-12);
    torch::Tensor zero = (-lo / scale).round().clamp(0, levels);
    torch::Tensor codes = (g / scale + zero).round().clamp(0, levels);
    return ((codes - zero) * scale).reshape({w.size(0), padded}).narrow(1, 0, cols);
  }

 private:
  Settings settings_;
  std::regex match_;
};

}  // namespace

MOELAB_PLUGIN(options, RoundToNearest)
