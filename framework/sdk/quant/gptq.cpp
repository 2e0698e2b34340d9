// GPTQ (Frantar et al., 2022), batched over matrices: the columns are quantized in blocks; inside a
// block each column's rounding error, scaled by the inverse Hessian's Cholesky factor, is subtracted
// from the block's later columns, and the block's accumulated error updates all later columns at once.
#include "moelab/lib/quant.h"

#include <torch/torch.h>

namespace moelab {

using torch::Tensor;

GptqResult gptq_quantize(const Tensor& w_in, const Tensor& hessian_in, const QuantSpec& spec, const GptqOptions& options) {
  torch::NoGradGuard no_grad;
  const bool batched = w_in.dim() == 3;
  Tensor W = (batched ? w_in : w_in.unsqueeze(0)).to(torch::kFloat32).clone();
  Tensor H = (batched ? hessian_in : hessian_in.unsqueeze(0)).to(torch::kFloat32).clone();
  const int64_t B = W.size(0), R = W.size(1), C = W.size(2), G = spec.group(C), groups = C / G;
  const bool has_zero = spec.format == QuantFormat::int3 || spec.format == QuantFormat::int4;

  // Columns whose input is always zero carry no information: their weights are zeroed.
  Tensor dead = H.diagonal(0, -2, -1) == 0;
  H.diagonal(0, -2, -1).masked_fill_(dead, 1.0);
  W.masked_fill_(dead.unsqueeze(1), 0.0);

  QuantGrids grids;
  Tensor perm;
  if (options.act_order) {  // grids fitted up front, so each column keeps its own group's grid in any order
    grids = fit_grids(W, spec);
    perm = std::get<1>(H.diagonal(0, -2, -1).sort(-1, /*descending=*/true));
    W = W.gather(2, perm.unsqueeze(1).expand({B, R, C}));
    H = H.gather(1, perm.unsqueeze(2).expand({B, C, C})).gather(2, perm.unsqueeze(1).expand({B, C, C}));
  } else {
    grids.scale = torch::zeros({B, R, groups}, W.options());
    if (has_zero) grids.zero = torch::zeros({B, R, groups}, W.options());
  }
  H.diagonal(0, -2, -1).add_((options.damp * H.diagonal(0, -2, -1).mean(-1)).unsqueeze(1));
  Tensor inverse = torch::cholesky_solve(torch::eye(C, W.options()).expand({B, C, C}), torch::linalg_cholesky(H));
  Tensor U = torch::linalg_cholesky(inverse).transpose(-2, -1);  // upper factor: H^-1 = U^T U

  Tensor Q = torch::zeros_like(W);
  for (int64_t i1 = 0; i1 < C; i1 += options.block_size) {
    const int64_t i2 = std::min<int64_t>(i1 + options.block_size, C), n = i2 - i1;
    Tensor W1 = W.narrow(2, i1, n).clone(), Q1 = torch::zeros_like(W1), E1 = torch::zeros_like(W1);
    Tensor U1 = U.narrow(1, i1, n).narrow(2, i1, n);
    for (int64_t i = 0; i < n; ++i) {
      const int64_t col = i1 + i;
      QuantGrids g;
      if (options.act_order) {
        Tensor group = perm.select(1, col).div(G, "floor").view({B, 1, 1}).expand({B, R, 1});
        g.scale = grids.scale.gather(2, group);
        if (has_zero) g.zero = grids.zero.gather(2, group);
      } else {
        if (col % G == 0) {  // fit the group's grid to the columns as they are now, after earlier updates
          Tensor current = torch::cat({W1.narrow(2, i, n - i), W.narrow(2, i2, C - i2)}, 2).narrow(2, 0, G);
          QuantGrids fitted = fit_grids(current, spec);
          grids.scale.narrow(2, col / G, 1).copy_(fitted.scale);
          if (has_zero) grids.zero.narrow(2, col / G, 1).copy_(fitted.zero);
        }
        g.scale = grids.scale.narrow(2, col / G, 1);
        if (has_zero) g.zero = grids.zero.narrow(2, col / G, 1);
      }
      Tensor w = W1.select(2, i);
      Tensor q = fake_quantize(w.unsqueeze(2), g, spec).squeeze(2);
      Tensor err = (w - q) / U1.select(1, i).select(1, i).unsqueeze(1);  // [B, R]
      Q1.select(2, i).copy_(q);
      E1.select(2, i).copy_(err);
      W1.narrow(2, i, n - i).sub_(err.unsqueeze(2) * U1.select(1, i).narrow(1, i, n - i).unsqueeze(1));
    }
    Q.narrow(2, i1, n).copy_(Q1);
    if (i2 < C) W.narrow(2, i2, C - i2).sub_(E1.bmm(U.narrow(1, i1, n).narrow(2, i2, C - i2)));
  }
  if (options.act_order) Q = Q.gather(2, std::get<1>(perm.sort(-1)).unsqueeze(1).expand({B, R, C}));
  if (!batched) {
    Q = Q.squeeze(0);
    grids.scale = grids.scale.squeeze(0);
    if (has_zero) grids.zero = grids.zero.squeeze(0);
  }
  return {Q, grids};
}

}  // namespace moelab
