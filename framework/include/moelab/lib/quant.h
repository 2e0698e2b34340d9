// Weight quantization of [rows, cols] matrices with groups along cols (the input dimension): INT4/INT3
// (asymmetric, per-group scale and zero point) and OCP MXFP4/MXFP8 (E2M1/E4M3 elements, one E8M0 scale
// per 32); round-to-nearest and GPTQ (batched over matrices: [B, rows, cols]); real packed storage.
// Every function takes a leading batch dimension or none.
#pragma once

#include <torch/types.h>

#include <string>
#include <utility>
#include <vector>

namespace moelab {

enum class QuantFormat { int3, int4, mxfp4, mxfp8 };
QuantFormat quant_format(const std::string& name);  // "int3", "int4", "mxfp4", "mxfp8"; throws listing them
// Every format with its name, in that order: the one table behind quant_format, quant_format_name and
// the stages' typed `format` choices.
const std::vector<std::pair<std::string, QuantFormat>>& quant_format_names();
std::string quant_format_name(QuantFormat format);

struct QuantSpec {
  QuantFormat format = QuantFormat::int4;
  long long group_size = 128;  // INT formats; MX formats always use blocks of 32
  long long group(long long cols) const;  // the group width used for `cols` columns (throws if it does not divide them)
};

// Per-group grids [..., rows, groups]: scale (INT: float16-representable; MX: a power of two) and, for
// INT formats, the zero point (an integer code); undefined for MX.
struct QuantGrids {
  torch::Tensor scale, zero;
};

// Grids fitted to w by min/max (INT, range widened to include 0) or by the block's largest magnitude (MX).
QuantGrids fit_grids(const torch::Tensor& w, const QuantSpec& spec);
// w rounded to the nearest point of its grids, dequantized (float32). Grids may cover exactly one group
// ([..., rows, 1]) for any number of columns of that group.
torch::Tensor fake_quantize(const torch::Tensor& w, const QuantGrids& grids, const QuantSpec& spec);

// The INT formats' rule for any width of 2..8 bits (int3 and int4 are bits 3 and 4): per group of `group`
// columns (dividing cols), lo = min(min w, 0) and hi = max(max w, 0), scale = (hi - lo) / (2^bits - 1)
// rounded to float16, zero = round(-lo / scale); codes round(w / scale) + zero, clamped to the levels.
// 0 is always a grid point, so a zero weight stays exactly zero.
QuantGrids fit_int_grids(const torch::Tensor& w, long long group, int bits);
torch::Tensor fake_quantize_int(const torch::Tensor& w, const QuantGrids& grids, int bits);

// A matrix in packed form: what a checkpoint stores.
struct PackedMatrix {
  QuantSpec spec;
  long long rows = 0, cols = 0;
  torch::Tensor codes;   // uint8 [rows, bytes]: 2 codes per byte (INT4, MXFP4), 8 per 3 bytes (INT3), 1 (MXFP8)
  torch::Tensor scales;  // INT: float16 [rows, groups]; MX: uint8 biased E8M0 exponent [rows, blocks]
  torch::Tensor zeros;   // INT: uint8 [rows, groups]; MX: undefined
  long long bytes() const;
};

// Packs q (values on `grids`, as fake_quantize or gptq return them) of one matrix [rows, cols].
PackedMatrix pack(const torch::Tensor& q, const QuantGrids& grids, const QuantSpec& spec);
torch::Tensor unpack(const PackedMatrix& packed);  // float32 [rows, cols]

struct GptqOptions {
  double damp = 0.01;          // added to H's diagonal, as a share of its mean diagonal
  long long block_size = 128;  // columns per lazy batch update
  bool act_order = false;      // quantize columns by decreasing H diagonal (grids then fitted up front)
};

struct GptqResult {
  torch::Tensor q;  // [..., rows, cols] float32, on the grids
  QuantGrids grids;
};

// GPTQ: quantizes w [B, rows, cols] column by column, spreading each column's rounding error over the
// columns not yet quantized through the inverse of H [B, cols, cols] (H = 2 X^T X / n of the inputs).
GptqResult gptq_quantize(const torch::Tensor& w, const torch::Tensor& hessian, const QuantSpec& spec, const GptqOptions& options);

}  // namespace moelab
