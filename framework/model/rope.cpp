// The formulas of transformers' modeling_rope_utils.py (ROPE_INIT_FUNCTIONS and dynamic_rope_update).
#include "rope.h"

#include <algorithm>
#include <cmath>
#include <map>
#include <vector>

namespace moelab {

namespace {

// The keys each rope_type reads besides rope_type / type / rope_theta.
const std::map<std::string, std::vector<const char*>> kTypeKeys = {
    {"default", {}},
    {"linear", {"factor"}},
    {"dynamic", {"factor"}},
    {"yarn", {"factor", "original_max_position_embeddings", "beta_fast", "beta_slow", "mscale", "mscale_all_dim", "attention_factor",
              "truncate"}},
    {"llama3", {"factor", "original_max_position_embeddings", "low_freq_factor", "high_freq_factor"}},
};

torch::Tensor default_inv_freq(double theta, int64_t dim) {
  return 1.0 / torch::pow(theta, torch::arange(0, dim, 2, torch::kFloat32) / static_cast<double>(dim));
}

torch::Tensor yarn_inv_freq(const RopeConfig& r, int64_t dim) {
  auto correction_dim = [&](double rotations) {
    return dim * std::log(r.original_max_positions / (rotations * 2 * M_PI)) / (2 * std::log(r.theta));
  };
  double low = correction_dim(r.beta_fast), high = correction_dim(r.beta_slow);
  if (r.truncate) {
    low = std::floor(low);
    high = std::ceil(high);
  }
  low = std::max(low, 0.0);
  high = std::min(high, static_cast<double>(dim - 1));
  if (low == high) high += 0.001;  // transformers' guard against a zero-width ramp
  torch::Tensor pos_freqs = torch::pow(r.theta, torch::arange(0, dim, 2, torch::kFloat32) / static_cast<double>(dim));
  torch::Tensor extrapolation = 1.0 / pos_freqs, interpolation = 1.0 / (r.factor * pos_freqs);
  torch::Tensor ramp = ((torch::arange(dim / 2, torch::kFloat32) - low) / (high - low)).clamp(0, 1);
  torch::Tensor extrapolation_share = 1 - ramp;
  return interpolation * (1 - extrapolation_share) + extrapolation * extrapolation_share;
}

torch::Tensor llama3_inv_freq(const RopeConfig& r, int64_t dim) {
  torch::Tensor inv_freq = default_inv_freq(r.theta, dim);
  const double low_freq_wavelen = r.original_max_positions / r.low_freq_factor;
  const double high_freq_wavelen = r.original_max_positions / r.high_freq_factor;
  torch::Tensor wavelen = 2 * M_PI / inv_freq;
  torch::Tensor scaled = torch::where(wavelen > low_freq_wavelen, inv_freq / r.factor, inv_freq);
  torch::Tensor smooth = (r.original_max_positions / wavelen - r.low_freq_factor) / (r.high_freq_factor - r.low_freq_factor);
  torch::Tensor smoothed = (1 - smooth) * scaled / r.factor + smooth * scaled;
  torch::Tensor medium = (wavelen >= high_freq_wavelen) & (wavelen <= low_freq_wavelen);
  return torch::where(medium, smoothed, scaled);
}

}  // namespace

double yarn_mscale(double factor, double mscale) { return factor <= 1 ? 1.0 : 0.1 * mscale * std::log(factor) + 1.0; }

RopeConfig read_rope(const ConfigKeys& k) {
  RopeConfig r;
  r.theta = k.positive_or("rope_theta", 10000.0);
  r.max_positions = k.at_least_or("max_position_embeddings", 0, 0);
  const bool scaling = k.has("rope_scaling"), parameters = k.has("rope_parameters");
  if (!scaling && !parameters) return r;
  const char* table = scaling ? "rope_scaling" : "rope_parameters";
  if (!k.json()[table].is_object()) throw k.error(fmt::format("{} is not a table ({})", table, k.json()[table].dump()));
  ConfigKeys s(k.json()[table], fmt::format("{} {}", k.file(), table));
  r.type = s.get_or<std::string>("rope_type", s.get_or<std::string>("type", "default"));
  auto keys = kTypeKeys.find(r.type);
  if (keys == kTypeKeys.end())
    throw s.error(fmt::format("rope_type \"{}\" is not supported (supported: default, linear, dynamic, yarn, llama3)", r.type));
  r.theta = s.positive_or("rope_theta", r.theta);
  if (s.get_or<double>("partial_rotary_factor", 1.0) != 1.0) throw s.error("partial_rotary_factor other than 1 is not supported");
  for (const auto& [key, value] : s.json().items()) {
    bool known = s.keys_read().count(key) > 0 || value.is_null();
    for (const char* used : keys->second) known = known || key == used;
    if (!known) throw s.error(fmt::format("key \"{}\" is not read by rope_type \"{}\"", key, r.type));
  }
  if (r.type == "default") return r;
  // yarn and llama3 take the pretraining length from a top-level key first, as transformers does.
  r.original_max_positions = k.at_least_or("original_max_position_embeddings", 0,
                                           s.at_least_or("original_max_position_embeddings", 0, r.max_positions));
  if ((r.type == "yarn" || r.type == "llama3") && r.original_max_positions <= 0)
    throw s.error(fmt::format("{} needs original_max_position_embeddings (or max_position_embeddings)", r.type));
  if (r.type == "yarn") {
    r.factor = s.has("factor") ? s.positive_or("factor", 1.0) : static_cast<double>(r.max_positions) / r.original_max_positions;
    if (!(r.factor > 0)) throw s.error(fmt::format("yarn needs a factor > 0 (or max_position_embeddings > 0), found {}", r.factor));
    r.beta_fast = s.positive_or("beta_fast", 32.0);
    r.beta_slow = s.positive_or("beta_slow", 1.0);
    r.truncate = s.get_or<bool>("truncate", true);
    const double mscale = s.get_or<double>("mscale", 0.0);
    r.mscale_all_dim = s.get_or<double>("mscale_all_dim", 0.0);
    r.attention_factor = s.has("attention_factor") ? s.positive_or("attention_factor", 1.0)
                         : mscale != 0 && r.mscale_all_dim != 0
                             ? yarn_mscale(r.factor, mscale) / yarn_mscale(r.factor, r.mscale_all_dim)
                             : yarn_mscale(r.factor);
    return r;
  }
  if (!s.has("factor")) throw s.error(fmt::format("rope_type \"{}\" needs a factor", r.type));
  r.factor = s.positive_or("factor", 1.0);
  if (r.type == "dynamic" && r.max_positions <= 0) throw k.error("rope_type \"dynamic\" needs max_position_embeddings");
  if (r.type == "llama3") {
    if (!s.has("low_freq_factor") || !s.has("high_freq_factor")) throw s.error("llama3 needs low_freq_factor and high_freq_factor");
    r.low_freq_factor = s.positive_or("low_freq_factor", 1.0);
    r.high_freq_factor = s.positive_or("high_freq_factor", 4.0);
    if (r.high_freq_factor <= r.low_freq_factor)
      throw s.error(fmt::format("llama3 needs high_freq_factor ({}) > low_freq_factor ({})", r.high_freq_factor, r.low_freq_factor));
  }
  return r;
}

torch::Tensor rope_inv_freq(const RopeConfig& rope, int64_t dim) {
  if (rope.type == "linear") return default_inv_freq(rope.theta, dim) / rope.factor;
  if (rope.type == "yarn") return yarn_inv_freq(rope, dim);
  if (rope.type == "llama3") return llama3_inv_freq(rope, dim);
  return default_inv_freq(rope.theta, dim);  // default; dynamic at max_positions, where its base is rope_theta
}

torch::Tensor dynamic_inv_freq(const RopeConfig& rope, int64_t dim, const torch::Tensor& seq_len) {
  torch::Tensor length = seq_len.to(torch::kFloat32).clamp_min(static_cast<double>(rope.max_positions)).unsqueeze(1);  // [B, 1]
  torch::Tensor base =
      rope.theta * torch::pow(rope.factor * length / static_cast<double>(rope.max_positions) - (rope.factor - 1), dim / (dim - 2.0));
  torch::Tensor scaled = 1.0 / torch::pow(base, torch::arange(0, dim, 2, length.options()) / static_cast<double>(dim));
  torch::Tensor unscaled = default_inv_freq(rope.theta, dim).to(length.device()).unsqueeze(0);
  return torch::where(seq_len.unsqueeze(1) > rope.max_positions, scaled, unscaled);
}

}  // namespace moelab
