// moelab_bench_decode: decoding throughput of issue #16's measures, on the shapes its transformers peer
// (benchmarks/hf_decode_peer.py) measures in the same call.
//   moelab_bench_decode MODEL_DIR [--prompt 128] [--new 256] [--batched-prompts 256] [--batch 64] [--roe-k 8]
//                       [--ttft-prompt 2048] [--device cuda] [--dtype bfloat16] [--run ID] [--growing-cache]
// One JSON line per measure (decode_b1, roe_k8_b1, decode_batched, ttft_2k) with tokens_per_s (ms for
// ttft), the bytes of weights one decode step reads, and the fraction of the H200's
// 4.8 TB/s that reading them at that rate takes. Greedy and RoE run the model API the generate stage
// uses (a static KV cache unless --growing-cache, RoE's replica rows reading the clean row's prefix).
// The process's peak GPU memory is polled outside (scripts/gpu.sh, as for moelab_bench).
#include "command_line.h"
#include "moe_model.h"

#include <nlohmann/json.hpp>
#include <torch/torch.h>

#include <chrono>
#include <iostream>
#include <string>

namespace {

struct Options {
  std::string model, device = "cuda", dtype = "bfloat16", run = "local";
  long long prompt = 128, fresh = 256, batched_prompts = 256, batch = 64, roe_k = 8, ttft_prompt = 2048;
  bool static_cache = true;
};

Options parse(int argc, char** argv) {
  if (argc < 2) throw std::runtime_error("usage: moelab_bench_decode MODEL_DIR [--prompt N] [--new N] [--batched-prompts N] [--batch B] "
                                         "[--roe-k K] [--ttft-prompt N] [--device D] [--dtype T] [--run ID] [--growing-cache]");
  Options o;
  o.model = argv[1];
  moelab::bench::CommandLine args(argc, argv, 2);
  for (std::string a; args.next(a);) {
    if (a == "--prompt") o.prompt = args.integer();
    else if (a == "--new") o.fresh = args.integer();
    else if (a == "--batched-prompts") o.batched_prompts = args.integer();
    else if (a == "--batch") o.batch = args.integer();
    else if (a == "--roe-k") o.roe_k = args.integer();
    else if (a == "--ttft-prompt") o.ttft_prompt = args.integer();
    else if (a == "--device") o.device = args.text();
    else if (a == "--dtype") o.dtype = args.text();
    else if (a == "--run") o.run = args.text();
    else if (a == "--growing-cache") o.static_cache = false;
    else throw std::runtime_error("unknown argument " + a);
  }
  return o;
}

using moelab::bench::synchronize;

double seconds_since(std::chrono::steady_clock::time_point start) {
  return std::chrono::duration<double>(std::chrono::steady_clock::now() - start).count();
}

// Bytes of weights one decode step of one token reads: every weight but the embedding table (a row per
// token) and the routed experts, of which top_k of num_experts per MoE layer.
double bytes_per_token(moelab::Model& model) {
  const moelab::ModelInfo& info = model.info();
  double bytes = 0;
  for (const auto& [name, w] : model.named_weights()) {
    if (name == "model.embed_tokens.weight") continue;
    const bool expert = name.find(".experts.") != std::string::npos;
    bytes += static_cast<double>(w.numel() * w.element_size()) * (expert ? static_cast<double>(info.top_k) / info.num_experts : 1.0);
  }
  return bytes;
}

// Greedy decoding of `fresh` tokens after the prompt rows; with replicas > 1, RoE's step: each row's clean
// replica and replicas - 1 noisy ones (Gumbel noise on the router logits), the mean of the noisy rows'
// probabilities picks the token. Returns the seconds of the decode steps (the prefill excluded).
double decode(moelab::Model& model, const torch::Tensor& prompt, long long fresh, long long replicas, bool static_cache) {
  torch::NoGradGuard no_grad;
  moelab::KVCache cache;
  if (static_cache) cache.capacity = prompt.size(1) - 1 + fresh;
  model.forward(prompt.narrow(1, 0, prompt.size(1) - 1), {}, &cache, true);
  torch::Tensor last = prompt.narrow(1, prompt.size(1) - 1, 1);
  if (replicas > 1)
    model.set_router_transform({[replicas](int, const torch::Tensor& logits) {
                                  torch::Tensor noisy = (torch::arange(logits.size(0), logits.options().dtype(torch::kInt64)) % static_cast<int64_t>(replicas)).ne(0);
                                  torch::Tensor u = torch::rand_like(logits).clamp_(1e-9, 1.0 - 1e-9);
                                  return logits - 0.01 * torch::log(-torch::log(u)) * noisy.unsqueeze(1);
                                },
                                false});
  synchronize(model.device());
  const auto start = std::chrono::steady_clock::now();
  for (long long step = 0; step < fresh; ++step) {
    torch::Tensor next;
    if (replicas > 1) {
      cache.replicas = replicas;
      torch::Tensor logits = model.forward(last.repeat_interleave(replicas, 0), {}, &cache, true).select(1, 0);
      cache.replicas = 1;
      next = logits.view({last.size(0), replicas, -1}).narrow(1, 1, replicas - 1).softmax(-1).mean(1).argmax(-1);
    } else {
      next = model.forward(last, {}, &cache, true).select(1, 0).argmax(-1);
    }
    last = next.unsqueeze(1);
  }
  synchronize(model.device());
  model.set_router_transform({});
  return seconds_since(start);
}

}  // namespace

int main(int argc, char** argv) try {
  const Options o = parse(argc, argv);
  const torch::Device device(o.device);
  const torch::ScalarType dtype = o.dtype == "float32" ? torch::kFloat32 : torch::kBFloat16;
  auto model = moelab::load_model(o.model, device, dtype);
  torch::manual_seed(0);
  const double weight_bytes = bytes_per_token(*model), bandwidth = 4.8e12;  // H200 HBM3e, ../shared/GPU.md
  auto ids = [&](long long rows, long long length) { return torch::randint(2, std::min<int64_t>(1000, model->info().vocab_size), {rows, length}, torch::dtype(torch::kInt64).device(device)); };
  auto line = [&](nlohmann::json j, double steps_per_s) {
    j["run"] = o.run;
    j["impl"] = "moelab";
    j["static_cache"] = o.static_cache;
    j["weight_bytes_per_step"] = weight_bytes;
    if (steps_per_s > 0) j["bandwidth_fraction"] = weight_bytes * steps_per_s / bandwidth;
    std::cout << j.dump() << std::endl;
  };

  decode(*model, ids(1, o.prompt), 8, 1, o.static_cache);  // warm-up
  double s = decode(*model, ids(1, o.prompt), o.fresh, 1, o.static_cache);
  line({{"measure", "decode_b1"}, {"prompt", o.prompt}, {"new_tokens", o.fresh}, {"tokens_per_s", o.fresh / s}}, o.fresh / s);

  s = decode(*model, ids(1, o.prompt), o.fresh, o.roe_k + 1, o.static_cache);
  line({{"measure", "roe_k8_b1"}, {"k", o.roe_k}, {"prompt", o.prompt}, {"new_tokens", o.fresh}, {"tokens_per_s", o.fresh / s}}, o.fresh / s);

  double total = 0;
  for (long long done = 0; done < o.batched_prompts; done += o.batch)
    total += decode(*model, ids(std::min(o.batch, o.batched_prompts - done), o.prompt), o.fresh, 1, o.static_cache);
  line({{"measure", "decode_batched"}, {"prompts", o.batched_prompts}, {"batch", o.batch}, {"prompt", o.prompt}, {"new_tokens", o.fresh},
        {"tokens_per_s", static_cast<double>(o.batched_prompts * o.fresh) / total}},
       static_cast<double>(o.batched_prompts * o.fresh) / total / static_cast<double>(o.batch));

  {  // time to first token: the prompt's forward and the first token on the host
    torch::NoGradGuard no_grad;
    torch::Tensor prompt = ids(1, o.ttft_prompt);
    model->forward(prompt, {}, nullptr, true);
      synchronize(device);
    const auto start = std::chrono::steady_clock::now();
    moelab::KVCache cache;
    if (o.static_cache) cache.capacity = o.ttft_prompt + 1;
    const long long first = model->forward(prompt, {}, &cache, true).select(1, 0).argmax(-1).item<int64_t>();
    (void)first;
    line({{"measure", "ttft_2k"}, {"prompt", o.ttft_prompt}, {"ms", seconds_since(start) * 1e3}}, 0);
  }
  return 0;
} catch (const std::exception& e) {
  std::cerr << "moelab_bench_decode: " << e.what() << "\n";
  return 1;
}
