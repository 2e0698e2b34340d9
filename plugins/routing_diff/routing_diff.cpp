// Differences between two router states on the same tokens (collect's compare mode): per MoE layer,
// the share of tokens whose top-k expert set changed, the mean Jaccard overlap of the sets, the share
// whose top-1 expert changed, and the usage shift (total variation distance between the two usage
// distributions). Figure: changed share and usage shift per layer.
#include "moelab/moelab.h"
#include "moelab/lib/files.h"
#include "moelab/lib/plot.h"

#include <sstream>

namespace {

using torch::Tensor;

class RoutingDiff final : public moelab::Analyzer {
 public:
  RoutingDiff(const moelab::Config&, moelab::RunContext&) {}

  nlohmann::json analyze(const moelab::RoutingRecords& records, const std::filesystem::path& out_dir) override {
    if (!records.compare) throw std::runtime_error("routing_diff: no second router state; set compare_with in the collect stage");
    const Tensor& a = records.topk_ids;
    const Tensor& b = records.compare->topk_ids;
    if (!a.sizes().equals(b.sizes()))
      throw std::runtime_error(fmt::format("routing_diff: the two states cover different tokens ({} vs {} rows)", a.size(0), b.size(0)));
    const long long experts = records.num_experts, layers = a.size(1);
    auto indicator = [&](const Tensor& ids) { return torch::zeros({ids.size(0), layers, experts}, torch::kFloat64).scatter_(2, ids, 1.0); };
    Tensor ia = indicator(a), ib = indicator(b);
    Tensor shared = (ia * ib).sum(2), either = ((ia + ib) > 0).to(torch::kFloat64).sum(2);  // [N, L]
    Tensor changed = (shared < static_cast<double>(a.size(2))).to(torch::kFloat64);
    Tensor jaccard = shared / either.clamp_min(1);
    Tensor top1 = a.gather(2, records.topk_weights.argmax(-1, true));
    Tensor top1_b = b.gather(2, records.compare->topk_weights.argmax(-1, true));
    Tensor top1_changed = (top1 != top1_b).to(torch::kFloat64).squeeze(2);
    Tensor shift = 0.5 * (moelab::usage_shares(a, experts) - moelab::usage_shares(b, experts)).abs().sum(1);  // [L]

    nlohmann::json out = {{"layers", nlohmann::json::array()}};
    std::ostringstream csv;
    csv << "layer,changed_topk_share,mean_jaccard,changed_top1_share,usage_shift_tv\n";
    for (long long l = 0; l < layers; ++l) {
      out["layers"].push_back({{"layer", records.layer_label(l)}, {"changed_topk_share", changed.select(1, l).mean().item<double>()},
                               {"mean_jaccard", jaccard.select(1, l).mean().item<double>()},
                               {"changed_top1_share", top1_changed.select(1, l).mean().item<double>()},
                               {"usage_shift_tv", shift[l].item<double>()}});
      csv << records.layer_label(l) << ',' << changed.select(1, l).mean().item<double>() << ',' << jaccard.select(1, l).mean().item<double>()
          << ',' << top1_changed.select(1, l).mean().item<double>() << ',' << shift[l].item<double>() << '\n';
    }
    out["changed_topk_share"] = changed.mean().item<double>();
    out["changed_top1_share"] = top1_changed.mean().item<double>();
    out["mean_usage_shift_tv"] = shift.mean().item<double>();
    if (records.set_ids.defined() && records.set_names.size() > 1)
      for (std::size_t s = 0; s < records.set_names.size(); ++s) {
        Tensor rows = records.rows_of_set(s);
        if (rows.numel() > 0) out["by_set"][records.set_names[s]] = {{"changed_topk_share", changed.index_select(0, rows).mean().item<double>()}};
      }
    moelab::write_file_atomic(out_dir / "routing_diff.csv", csv.str());
    out["figures"] = {moelab::plot_lines(out_dir, "diff_by_layer",
                                         {{"changed top-k set", changed.mean(0)}, {"changed top-1", top1_changed.mean(0)}, {"usage shift (TV)", shift}},
                                         {"Routing changes between the two router states", "decoder layer", "share", "", records.layer_labels(shift.size(0))},
                                         "Per layer: share of tokens whose top-k expert set or top-1 expert changed, and the total variation "
                                         "distance between the two expert-usage distributions.")};
    return out;
  }
};

moelab::Descriptor describe() {
  return moelab::Descriptor("routing_diff", moelab::Kind::analyzer, "0.1.0",
                            "two router states on the same tokens: changed top-k sets, top-1 changes, usage shift");
}

}  // namespace

MOELAB_PLUGIN(describe, RoutingDiff)
