// moelab_bench: throughput and a per-kernel time table of moelab's forward pass and of a router-only
// train step, on the shapes its transformers peer (benchmarks/hf_profile.py) measures in the same call.
//   moelab_bench MODEL_DIR [--batch 8] [--seq 2048] [--iters 10] [--train-batch 32] [--train-seq 256]
//                [--train-last 5] [--device cuda] [--dtype bfloat16] [--run ID] [--no-profile]
// Prints one JSON line per measure (`forward`, `forward_last_only`, `train_step`) with tokens/s, and
// one `profile` line per profiled measure: every GPU kernel's name, launches and total microseconds per
// call, from LibTorch's Kineto profiler (benchmarks/profile_table.py groups them into blocks).
#include "command_line.h"
#include "moe_model.h"
#include "moelab/lib/compat.h"

#include <nlohmann/json.hpp>
#include <torch/csrc/autograd/profiler_kineto.h>
#include <torch/torch.h>

#include <chrono>
#include <iostream>
#include <map>
#include <string>

namespace {

struct Options {
  std::string model, device = "cuda", dtype = "bfloat16", run = "local";
  long long batch = 8, seq = 2048, iters = 10, train_batch = 32, train_seq = 256, train_last = 5;
  bool profile = true;
};

Options parse(int argc, char** argv) {
  if (argc < 2) throw std::runtime_error("usage: moelab_bench MODEL_DIR [--batch B] [--seq T] [--iters N] [--train-batch B] "
                                         "[--train-seq T] [--train-last N] [--device D] [--dtype T] [--run ID] [--no-profile]");
  Options o;
  o.model = argv[1];
  moelab::bench::CommandLine args(argc, argv, 2);
  for (std::string a; args.next(a);) {
    if (a == "--batch") o.batch = args.integer();
    else if (a == "--seq") o.seq = args.integer();
    else if (a == "--iters") o.iters = args.integer();
    else if (a == "--train-batch") o.train_batch = args.integer();
    else if (a == "--train-seq") o.train_seq = args.integer();
    else if (a == "--train-last") o.train_last = args.integer();
    else if (a == "--device") o.device = args.text();
    else if (a == "--dtype") o.dtype = args.text();
    else if (a == "--run") o.run = args.text();
    else if (a == "--no-profile") o.profile = false;
    else throw std::runtime_error("unknown argument " + a);
  }
  return o;
}

using moelab::bench::synchronize;

// Seconds per call of f, after two warm-up calls.
template <class F>
double seconds_per_call(F&& f, long long iters, const torch::Device& device) {
  f();
  f();
  synchronize(device);
  auto start = std::chrono::steady_clock::now();
  for (long long i = 0; i < iters; ++i) f();
  synchronize(device);
  return std::chrono::duration<double>(std::chrono::steady_clock::now() - start).count() / iters;
}

// GPU kernels launched by `calls` calls of f: name -> {launches, microseconds}, per call.
template <class F>
nlohmann::json kernel_table(F&& f, int calls, const torch::Device& device) {
  namespace prof = torch::autograd::profiler;
  const torch::profiler::impl::ProfilerConfig config(torch::profiler::impl::ProfilerState::KINETO);
  const std::set<torch::profiler::impl::ActivityType> activities{torch::profiler::impl::ActivityType::CPU,
                                                                  torch::profiler::impl::ActivityType::CUDA};
  f();
  synchronize(device);
  prof::prepareProfiler(config, activities);
  prof::enableProfiler(config, activities);
  for (int i = 0; i < calls; ++i) f();
  synchronize(device);
  auto result = prof::disableProfiler();
  std::map<std::string, std::pair<long long, double>> by_name;
  for (const auto& event : result->events()) {
    if (event.deviceType() != c10::DeviceType::CUDA) continue;
    auto& [count, us] = by_name[event.name()];
    count += 1;
    us += moelab::compat::event_duration_us(event);
  }
  nlohmann::json kernels = nlohmann::json::array();
  for (const auto& [name, v] : by_name)
    kernels.push_back({{"name", name}, {"launches", static_cast<double>(v.first) / calls}, {"us", v.second / calls}});
  return kernels;
}

// Model FLOPs per token of a forward over `seq` tokens: 2 x the weights each token multiplies (routed
// experts at top_k / num_experts of their size; the embedding lookup is free) + causal attention scores.
double forward_flops_per_token(moelab::Model& model, long long seq) {
  const moelab::ModelInfo& info = model.info();
  double weights = 0, attention_width = 0;
  for (const auto& [name, w] : model.named_weights()) {
    if (w.dim() != 2 || name == "model.embed_tokens.weight") continue;
    const bool expert = name.find(".experts.") != std::string::npos;
    weights += static_cast<double>(w.numel()) * (expert ? static_cast<double>(info.top_k) / info.num_experts : 1.0);
    if (name.find("self_attn.q_proj.weight") != std::string::npos || name.find("self_attn.q_b_proj.weight") != std::string::npos)
      attention_width += static_cast<double>(w.size(0));
  }
  bool has_head = false;
  for (const auto& named : model.named_weights()) has_head = has_head || named.first == "lm_head.weight";
  if (!has_head) weights += static_cast<double>(info.vocab_size) * info.hidden_size;  // tied: the embedding is the head
  // QK^T and PV over on average seq / 2 earlier positions, 2 FLOPs per multiply-add.
  return 2.0 * weights + 2.0 * 2.0 * attention_width * static_cast<double>(seq) / 2.0;
}

}  // namespace

int main(int argc, char** argv) try {
  Options o = parse(argc, argv);
  torch::Device device(o.device);
  torch::ScalarType dtype = o.dtype == "float32" ? torch::kFloat32 : o.dtype == "float16" ? torch::kFloat16 : torch::kBFloat16;
  auto model = moelab::load_model(o.model, device, dtype);
  torch::manual_seed(0);
  const double peak_flops = 790e12;  // H200 dense bf16, ../shared/GPU.md

  auto line = [&](nlohmann::json j) {
    j["run"] = o.run;
    j["impl"] = "moelab";
    std::cout << j.dump() << std::endl;
  };

  {
    torch::NoGradGuard no_grad;
    torch::Tensor ids = torch::randint(2, 1000, {o.batch, o.seq}, torch::dtype(torch::kInt64).device(device));
    auto forward = [&] { model->forward(ids, torch::Tensor()); };
    double s = seconds_per_call(forward, o.iters, device);
    double tokens_per_s = static_cast<double>(o.batch * o.seq) / s;
    line({{"measure", "forward"}, {"batch", o.batch}, {"seq", o.seq}, {"ms", s * 1e3}, {"tokens_per_s", tokens_per_s},
          {"mfu", tokens_per_s * forward_flops_per_token(*model, o.seq) / peak_flops}});
    auto last_only = [&] { model->forward(ids, torch::Tensor(), nullptr, /*last_only=*/true); };
    s = seconds_per_call(last_only, o.iters, device);
    line({{"measure", "forward_last_only"}, {"batch", o.batch}, {"seq", o.seq}, {"ms", s * 1e3},
          {"tokens_per_s", static_cast<double>(o.batch * o.seq) / s}});
    if (o.profile && device.is_cuda()) line({{"measure", "profile"}, {"of", "forward"}, {"kernels", kernel_table(forward, 3, device)}});
  }

  // The router-only step of benchmarks/hf_peers.py: the last N MoE layers' routers train, cross-entropy
  // over 4 answer ids at the last position, AdamW.
  std::vector<torch::Tensor> routers;
  const auto& moe_layers = model->info().moe_layers;
  for (size_t i = moe_layers.size() - std::min<size_t>(moe_layers.size(), o.train_last); i < moe_layers.size(); ++i) {
    torch::Tensor w = model->router_weight(moe_layers[i]);
    w.requires_grad_(true);
    routers.push_back(w);
  }
  torch::optim::AdamW optimizer(routers, torch::optim::AdamWOptions(7e-5).weight_decay(0.01));
  torch::Tensor ids = torch::randint(2, 1000, {o.train_batch, o.train_seq}, torch::dtype(torch::kInt64).device(device));
  torch::Tensor labels = torch::randint(0, 4, {o.train_batch}, torch::dtype(torch::kInt64).device(device));
  auto step = [&] {
    torch::Tensor logits = model->forward(ids, torch::Tensor(), nullptr, /*last_only=*/true).select(1, 0).narrow(1, 0, 4);
    torch::Tensor loss = torch::nn::functional::cross_entropy(logits, labels);
    optimizer.zero_grad();
    loss.backward();
    optimizer.step();
  };
  double s = seconds_per_call(step, o.iters, device);
  line({{"measure", "train_step"}, {"batch", o.train_batch}, {"seq", o.train_seq}, {"train_last", o.train_last}, {"ms", s * 1e3},
        {"tokens_per_s", static_cast<double>(o.train_batch * o.train_seq) / s}});
  if (o.profile && device.is_cuda()) line({{"measure", "profile"}, {"of", "train_step"}, {"kernels", kernel_table(step, 3, device)}});
  return 0;
} catch (const std::exception& e) {
  std::cerr << "moelab_bench: " << e.what() << "\n";
  return 1;
}
