// The quantization formats: grids, rounding, packing and unpacking.
#include "moelab/lib/quant.h"

#include <fmt/format.h>
#include <fmt/ranges.h>
#include <torch/torch.h>

#include <cmath>

namespace moelab {

using torch::Tensor;

namespace {

constexpr long long kMxBlock = 32;

bool is_mx(QuantFormat f) { return f == QuantFormat::mxfp4 || f == QuantFormat::mxfp8; }
int int_bits(QuantFormat f) { return f == QuantFormat::int3 ? 3 : 4; }
double int_levels(int bits) { return static_cast<double>((1 << bits) - 1); }
double int_levels(QuantFormat f) { return int_levels(int_bits(f)); }
int mx_emax(QuantFormat f) { return f == QuantFormat::mxfp4 ? 2 : 8; }  // exponent of the largest normal element

// x (in units of the block scale) to the nearest E2M1 value {0, .5, 1, 1.5, 2, 3, 4, 6}, saturating.
Tensor round_e2m1(const Tensor& x) {
  Tensor m = x.abs().clamp_max(6.0);
  Tensor q = torch::where(m < 2, (m * 2).round() / 2, torch::where(m < 4, m.round(), (m / 2).round() * 2));
  return q * x.sign();
}

// x to the nearest E4M3 (FN) value: 3 mantissa bits, normals from 2^-6, subnormal step 2^-9, max 448.
Tensor round_e4m3(const Tensor& x) {
  Tensor m = x.abs().clamp_max(448.0);
  Tensor step = torch::exp2(m.clamp_min(std::ldexp(1.0, -6)).log2().floor() - 3);
  return ((m / step).round() * step).clamp_max(448.0) * x.sign();
}

// Per-column grids [..., rows, cols] from grids [..., rows, groups].
Tensor per_column(const Tensor& grid, long long cols) {
  const long long groups = grid.size(-1);
  return groups == cols ? grid : grid.repeat_interleave(cols / groups, -1);
}

Tensor grouped(const Tensor& w, long long group) {  // [..., rows, cols] -> [..., rows, cols / group, group]
  std::vector<int64_t> shape = w.sizes().vec();
  shape.back() /= group;
  shape.push_back(group);
  return w.reshape(shape);
}

}  // namespace

const std::vector<std::pair<std::string, QuantFormat>>& quant_format_names() {
  static const std::vector<std::pair<std::string, QuantFormat>> names = {
      {"int3", QuantFormat::int3}, {"int4", QuantFormat::int4}, {"mxfp4", QuantFormat::mxfp4}, {"mxfp8", QuantFormat::mxfp8}};
  return names;
}

QuantFormat quant_format(const std::string& name) {
  std::vector<std::string> known;
  for (const auto& [n, format] : quant_format_names()) {
    if (n == name) return format;
    known.push_back(n);
  }
  throw std::runtime_error(fmt::format("unknown quantization format \"{}\" (known: {})", name, fmt::join(known, ", ")));
}

std::string quant_format_name(QuantFormat format) {
  for (const auto& [name, f] : quant_format_names())
    if (f == format) return name;
  return "?";
}

long long QuantSpec::group(long long cols) const {
  const long long g = is_mx(format) ? kMxBlock : std::min(group_size, cols);
  if (g < 1 || cols % g != 0)
    throw std::runtime_error(fmt::format("{}: a group of {} columns does not divide a matrix with {} columns{}", quant_format_name(format), g, cols,
                                         is_mx(format) ? " (OCP MX blocks are 32 elements)" : "; choose a group_size that divides it"));
  if (format == QuantFormat::int3 && cols % 8 != 0) throw std::runtime_error(fmt::format("int3 packs 8 codes in 3 bytes: {} columns is not a multiple of 8", cols));
  return g;
}

QuantGrids fit_grids(const Tensor& w_in, const QuantSpec& spec) {
  Tensor w = w_in.to(torch::kFloat32);
  const long long group = spec.group(w.size(-1));
  if (!is_mx(spec.format)) return fit_int_grids(w, group, int_bits(spec.format));
  Tensor amax = grouped(w, group).abs().amax(-1);
  Tensor exponent = torch::where(amax > 0, amax.clamp_min(1e-38).log2().floor() - mx_emax(spec.format), torch::full_like(amax, -127.0));
  QuantGrids grids;
  grids.scale = torch::exp2(exponent.clamp(-127, 127));
  return grids;
}

Tensor fake_quantize(const Tensor& w_in, const QuantGrids& grids, const QuantSpec& spec) {
  if (!is_mx(spec.format)) return fake_quantize_int(w_in, grids, int_bits(spec.format));
  Tensor w = w_in.to(torch::kFloat32);
  Tensor scale = per_column(grids.scale, w.size(-1));
  if (spec.format == QuantFormat::mxfp4) return round_e2m1(w / scale) * scale;
  return round_e4m3(w / scale) * scale;
}

QuantGrids fit_int_grids(const Tensor& w_in, long long group, int bits) {
  if (bits < 2 || bits > 8) throw std::runtime_error(fmt::format("INT quantization takes 2 to 8 bits, got {}", bits));
  Tensor w = w_in.to(torch::kFloat32);
  if (group < 1 || w.size(-1) % group != 0)
    throw std::runtime_error(fmt::format("INT quantization: a group of {} columns does not divide a matrix with {} columns", group, w.size(-1)));
  Tensor g = grouped(w, group);
  const double levels = int_levels(bits);
  Tensor lo = std::get<0>(g.min(-1)).clamp_max(0.0), hi = std::get<0>(g.max(-1)).clamp_min(0.0);
  Tensor scale = (hi - lo) / levels;
  scale = torch::where(scale > 0, scale, torch::ones_like(scale)).clamp_min(1e-6).to(torch::kHalf).to(torch::kFloat32);
  QuantGrids grids;
  grids.scale = scale;
  grids.zero = (-lo / scale).round().clamp(0, levels);
  return grids;
}

Tensor fake_quantize_int(const Tensor& w_in, const QuantGrids& grids, int bits) {
  Tensor w = w_in.to(torch::kFloat32);
  Tensor scale = per_column(grids.scale, w.size(-1)), zero = per_column(grids.zero, w.size(-1));
  return ((w / scale).round() + zero).clamp(0, int_levels(bits)).sub(zero).mul(scale);
}

long long PackedMatrix::bytes() const {
  long long total = codes.numel() + scales.numel() * static_cast<long long>(scales.element_size());
  return zeros.defined() ? total + zeros.numel() : total;
}

PackedMatrix pack(const Tensor& q_in, const QuantGrids& grids, const QuantSpec& spec) {
  Tensor q = q_in.to(torch::kCPU, torch::kFloat32);
  PackedMatrix p;
  p.spec = spec;
  p.rows = q.size(0);
  p.cols = q.size(1);
  spec.group(p.cols);
  Tensor scale = per_column(grids.scale.to(q.device()), p.cols);
  Tensor codes;  // int32 [rows, cols]
  if (is_mx(spec.format)) {
    Tensor v = q / scale, m = v.abs(), negative = (v < 0).to(torch::kInt32);
    if (spec.format == QuantFormat::mxfp4) {
      Tensor index = torch::where(m < 2, m * 2, torch::where(m < 4, m + 2, m / 2 + 4)).round().to(torch::kInt32);
      codes = negative * 8 + index;
    } else {
      Tensor normal = m >= std::ldexp(1.0, -6);
      Tensor e = m.clamp_min(std::ldexp(1.0, -6)).log2().floor();
      Tensor mantissa = torch::where(normal, (m / torch::exp2(e) - 1) * 8, m * 512).round().to(torch::kInt32);
      Tensor biased = torch::where(normal, e + 7, torch::zeros_like(e)).to(torch::kInt32);
      codes = negative * 128 + biased * 8 + mantissa;
    }
    p.scales = (grids.scale.to(torch::kCPU).log2().round() + 127).to(torch::kUInt8);
  } else {
    Tensor zero = per_column(grids.zero.to(q.device()), p.cols);
    codes = ((q / scale).round() + zero).clamp(0, int_levels(spec.format)).to(torch::kInt32);
    p.scales = grids.scale.to(torch::kCPU, torch::kHalf);
    p.zeros = grids.zero.to(torch::kCPU).to(torch::kUInt8);
  }
  if (spec.format == QuantFormat::mxfp8) {
    p.codes = codes.to(torch::kUInt8);
  } else if (spec.format == QuantFormat::int3) {
    Tensor eight = codes.view({p.rows, p.cols / 8, 8});
    Tensor value = torch::zeros({p.rows, p.cols / 8}, torch::kInt32);
    for (int i = 0; i < 8; ++i) value += eight.select(2, i) * (1 << (3 * i));
    p.codes = torch::stack({value.remainder(256), value.div(256, "floor").remainder(256), value.div(65536, "floor")}, 2)
                  .reshape({p.rows, p.cols / 8 * 3}).to(torch::kUInt8);
  } else {  // two 4-bit codes per byte, the even column in the low half
    Tensor pairs = codes.view({p.rows, p.cols / 2, 2});
    p.codes = (pairs.select(2, 0) + pairs.select(2, 1) * 16).to(torch::kUInt8);
  }
  return p;
}

Tensor unpack(const PackedMatrix& p) {
  Tensor bytes = p.codes.to(torch::kInt32);
  Tensor codes;
  if (p.spec.format == QuantFormat::mxfp8) {
    codes = bytes;
  } else if (p.spec.format == QuantFormat::int3) {
    Tensor triple = bytes.view({p.rows, p.cols / 8, 3});
    Tensor value = triple.select(2, 0) + triple.select(2, 1) * 256 + triple.select(2, 2) * 65536;
    std::vector<Tensor> parts;
    for (int i = 0; i < 8; ++i) parts.push_back(value.div(1 << (3 * i), "floor").remainder(8));
    codes = torch::stack(parts, 2).reshape({p.rows, p.cols});
  } else {
    codes = torch::stack({bytes.remainder(16), bytes.div(16, "floor")}, 2).reshape({p.rows, p.cols});
  }
  Tensor c = codes.to(torch::kFloat32);
  if (p.spec.format == QuantFormat::mxfp4 || p.spec.format == QuantFormat::mxfp8) {
    Tensor scale = per_column(torch::exp2(p.scales.to(torch::kFloat32) - 127), p.cols);
    if (p.spec.format == QuantFormat::mxfp4) {
      Tensor table = torch::tensor({0.0f, 0.5f, 1.0f, 1.5f, 2.0f, 3.0f, 4.0f, 6.0f});
      Tensor magnitude = table.index_select(0, codes.remainder(8).reshape(-1).to(torch::kInt64)).view({p.rows, p.cols});
      return torch::where(codes >= 8, -magnitude, magnitude) * scale;
    }
    Tensor e = codes.remainder(128).div(8, "floor").to(torch::kFloat32), m = codes.remainder(8).to(torch::kFloat32);
    Tensor magnitude = torch::where(e > 0, (1 + m / 8) * torch::exp2(e - 7), m / 512);
    return torch::where(codes >= 128, -magnitude, magnitude) * scale;
  }
  Tensor scale = per_column(p.scales.to(torch::kFloat32), p.cols), zero = per_column(p.zeros.to(torch::kFloat32), p.cols);
  return (c - zero) * scale;
}

}  // namespace moelab
