// Round-to-nearest weight quantization, applied in place as fake-quant: each row of a matching
// weight is split into groups of `group_size` columns with an asymmetric scale and zero point.
#include "moelab/moelab.h"

#include <regex>

namespace {

class RoundToNearest final : public moelab::Transform {
 public:
  RoundToNearest(const moelab::Config& config, moelab::RunContext&)
      : bits_(config.get_int("bits")), group_size_(config.get_int("group_size")), pattern_(config.get_string("match")), match_(pattern_) {
    if (bits_ < 2 || bits_ > 8) throw std::runtime_error(fmt::format("[{}] bits must be 2..8, found {}", config.id(), bits_));
    if (group_size_ < 1) throw std::runtime_error(fmt::format("[{}] group_size must be positive", config.id()));
  }

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
    if (matrices == 0) moelab::log::warn("rtn: no 2-D weight matches '{}'", pattern_);
    return {{"matrices", matrices}, {"bits", bits_}, {"group_size", group_size_},
            {"rmse", elements ? std::sqrt(squared_error / elements) : 0.0}};
  }

  // Fake-quantizes [rows, cols]; the last group of a row may be shorter.
  torch::Tensor quantize(const torch::Tensor& w) const {
    const long long cols = w.size(1), padded = (cols + group_size_ - 1) / group_size_ * group_size_;
    torch::Tensor padded_w = padded == cols ? w : torch::cat({w, w.narrow(1, cols - 1, 1).expand({w.size(0), padded - cols})}, 1);
    torch::Tensor g = padded_w.reshape({w.size(0), -1, group_size_});
    const double levels = static_cast<double>((1LL << bits_) - 1);
    torch::Tensor lo = std::get<0>(g.min(-1, true)), hi = std::get<0>(g.max(-1, true));
    torch::Tensor scale = ((hi - lo) / levels).clamp_min(1e-12);
    torch::Tensor zero = (-lo / scale).round().clamp(0, levels);
    torch::Tensor codes = (g / scale + zero).round().clamp(0, levels);
    return ((codes - zero) * scale).reshape({w.size(0), padded}).narrow(1, 0, cols);
  }

 private:
  long long bits_, group_size_;
  std::string pattern_;
  std::regex match_;
};

moelab::Descriptor describe() {
  return moelab::Descriptor("rtn", moelab::Kind::transform, "0.1.0", "round-to-nearest asymmetric INTn fake-quant, per group")
      .integer("bits", 4, "bits per weight (2..8)")
      .integer("group_size", 128, "columns sharing one scale and zero point")
      .string("match", "experts\\.", "regex over checkpoint names selecting the weights");
}

}  // namespace

MOELAB_PLUGIN(describe, RoundToNearest)
