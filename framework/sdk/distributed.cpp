#include "moelab/lib/distributed.h"

#include "moelab/lib/compat.h"
#include "moelab/lib/log.h"
#include "moelab/options.h"

#include <c10/core/impl/DeviceGuardImplInterface.h>
#include <fmt/format.h>
#include <torch/csrc/distributed/c10d/Backend.hpp>
#include <torch/csrc/distributed/c10d/PrefixStore.hpp>
#include <torch/csrc/distributed/c10d/ProcessGroup.hpp>
#include <torch/csrc/distributed/c10d/TCPStore.hpp>
#include <torch/csrc/distributed/c10d/Work.hpp>
#include <torch/torch.h>
#ifdef MOELAB_C10D_GLOO
#include <torch/csrc/distributed/c10d/ProcessGroupGloo.hpp>
#endif
#ifdef MOELAB_C10D_NCCL
#include <torch/csrc/distributed/c10d/ProcessGroupNCCL.hpp>
#endif

#include <chrono>
#include <cstdlib>
#include <cstring>
#include <exception>
#include <functional>
#include <map>

namespace moelab::distributed {

namespace {

struct Group {
  c10::intrusive_ptr<c10d::Store> store;
  c10::intrusive_ptr<compat::C10dBackend> backend;
  std::string backend_name = "none";
  int rank = 0, world = 1, local_rank = 0;
  double timeout_s = 600;
  bool device_tensors = false;  // nccl: collectives take CUDA tensors
};

Group& group() {
  static Group g;
  return g;
}

const char* variable(const char* name) { return std::getenv(name); }

int integer_variable(const char* name, int fallback) {
  const char* text = variable(name);
  if (!text) return fallback;
  try {
    std::size_t used = 0;
    const int value = std::stoi(text, &used);
    if (used == std::string(text).size() && value >= 0) return value;
  } catch (const std::exception&) {
  }
  throw std::runtime_error(fmt::format("distributed: the environment variable {}=\"{}\" is not a non-negative integer", name, text));
}

std::string describe_failure(const std::string& what, const std::string& cause) {
  const Group& g = group();
  return fmt::format("distributed: rank {} of {}: {} failed: another rank stopped (died or failed) or did not answer within "
                     "[distributed] timeout_s = {:g} s; this rank stops too ({}: {})",
                     g.rank, g.world, what, g.timeout_s, g.backend_name, cause.substr(0, 400));
}

// Runs one collective; any c10d/gloo/nccl error becomes DistributedError naming `what`.
void collective(const std::string& what, const std::function<c10::intrusive_ptr<c10d::Work>()>& start) {
  try {
    start()->wait();
  } catch (const DistributedError&) {
    throw;
  } catch (const std::exception& e) {
    throw DistributedError(describe_failure(what, e.what()));
  }
}

torch::Tensor to_backend(const torch::Tensor& t) {
  return group().device_tensors ? t.to(torch::Device(torch::kCUDA, group().local_rank)) : t.to(torch::kCPU);
}

}  // namespace

const Options<Settings>& settings_options() {
  static const auto o =
      Options<Settings>()
          .choice("backend", &Settings::backend, Backend::automatic,
                  {{"auto", Backend::automatic}, {"gloo", Backend::gloo}, {"nccl", Backend::nccl}},
                  "c10d backend under torchrun (RANK/WORLD_SIZE set): auto picks nccl when the model runs on CUDA and this LibTorch "
                  "has it, else gloo")
          .real("timeout_s", &Settings::timeout_s, 600.0,
                "seconds a rank waits for the others (start-up and each collective); a rank that died or hangs stops the others "
                "with an error after at most this long")
          .positive();
  return o;
}

bool launched() { return variable("RANK") && variable("WORLD_SIZE"); }

bool built_with(Backend backend) {
#ifdef MOELAB_C10D_NCCL
  constexpr bool kNccl = true;
#else
  constexpr bool kNccl = false;
#endif
#ifdef MOELAB_C10D_GLOO
  constexpr bool kGloo = true;
#else
  constexpr bool kGloo = false;
#endif
  switch (backend) {
    case Backend::gloo: return kGloo;
    case Backend::nccl: return kNccl;
    case Backend::automatic: return kGloo || kNccl;
  }
  return false;
}

void init(const Settings& settings, bool cuda) {
  if (!launched()) return;
  Group& g = group();
  g.rank = integer_variable("RANK", 0);
  g.world = integer_variable("WORLD_SIZE", 1);
  g.local_rank = integer_variable("LOCAL_RANK", g.rank);
  g.timeout_s = settings.timeout_s;
  if (g.world < 1 || g.rank >= g.world)
    throw std::runtime_error(fmt::format("distributed: RANK={} is not below WORLD_SIZE={}", g.rank, g.world));
  const char* addr = variable("MASTER_ADDR");
  const int port = integer_variable("MASTER_PORT", -1);
  if (!addr || port < 0)
    throw std::runtime_error(fmt::format("distributed: RANK and WORLD_SIZE are set, but MASTER_ADDR ({}) and MASTER_PORT ({}) must be too "
                                         "(torchrun sets all of them)", addr ? addr : "unset", port < 0 ? "unset" : std::to_string(port)));
  if (port > 65535) throw std::runtime_error(fmt::format("distributed: MASTER_PORT={} is not a port", port));
  if (cuda) c10::impl::getDeviceGuardImpl(c10::kCUDA)->setDevice(c10::Device(c10::kCUDA, static_cast<c10::DeviceIndex>(g.local_rank)));

  Backend backend = settings.backend;
  const bool kNccl = built_with(Backend::nccl), kGloo = built_with(Backend::gloo);
  if (backend == Backend::automatic) backend = cuda && kNccl ? Backend::nccl : Backend::gloo;
  if (backend == Backend::nccl && !kNccl)
    throw std::runtime_error("[distributed] backend = \"nccl\": this LibTorch build has no c10d NCCL process group (see README, Several GPUs)");
  if (backend == Backend::nccl && !cuda)
    throw std::runtime_error("[distributed] backend = \"nccl\" needs the model on CUDA; this run's model is on the CPU (use \"gloo\" or \"auto\")");
  if (backend == Backend::gloo && !kGloo)
    throw std::runtime_error(
        "distributed: this LibTorch build has no c10d Gloo process group (moelab was configured without its headers: see README, Several "
        "GPUs)");

  const auto timeout = std::chrono::milliseconds(static_cast<long long>(settings.timeout_s * 1000));
  try {
    // torchrun's agent already serves a TCPStore at MASTER_PORT and says so with TORCHELASTIC_USE_AGENT_STORE:
    // every rank is then a client, under the attempt's prefix (as torch.distributed's env:// does).
    const char* agent = variable("TORCHELASTIC_USE_AGENT_STORE");
    const bool agent_store = agent && std::string(agent) == "True";
    c10d::TCPStoreOptions store_options;
    store_options.port = static_cast<std::uint16_t>(port);
    store_options.isServer = g.rank == 0 && !agent_store;
    store_options.numWorkers = g.world;
    store_options.waitWorkers = !agent_store;
    store_options.timeout = timeout;
    auto tcp_store = c10::make_intrusive<c10d::TCPStore>(addr, store_options);
    if (agent_store) {
      const char* attempt = variable("TORCHELASTIC_RESTART_COUNT");
      g.store = c10::make_intrusive<c10d::PrefixStore>(fmt::format("/worker/attempt_{}", attempt ? attempt : "0"), tcp_store);
    } else {
      g.store = tcp_store;
    }
#ifdef MOELAB_C10D_NCCL
    if (backend == Backend::nccl) {
      auto options = c10d::ProcessGroupNCCL::Options::create();
      options->timeout = timeout;
      g.backend = c10::make_intrusive<c10d::ProcessGroupNCCL>(g.store, g.rank, g.world, options);
      g.backend_name = "nccl";
      g.device_tensors = true;
    }
#endif
#ifdef MOELAB_C10D_GLOO
    if (backend == Backend::gloo) {
      auto options = c10d::ProcessGroupGloo::Options::create(timeout);
      // This machine's address for Gloo's pairs: GLOO_SOCKET_IFNAME's interface as torch.distributed does,
      // the loopback when the whole group is on it, else the address this host's name resolves to.
      const std::string address = addr;
      if (const char* interface = variable("GLOO_SOCKET_IFNAME"))
        options->devices.push_back(c10d::ProcessGroupGloo::createDeviceForInterface(interface));
      else if (address == "localhost" || address.rfind("127.", 0) == 0)
        options->devices.push_back(c10d::ProcessGroupGloo::createDeviceForHostname("127.0.0.1"));
      else
        options->devices.push_back(c10d::ProcessGroupGloo::createDefaultDevice());
      g.backend = c10::make_intrusive<c10d::ProcessGroupGloo>(g.store, g.rank, g.world, options);
      g.backend_name = "gloo";
    }
#endif
  } catch (const std::exception& e) {
    g.store.reset();
    g.backend.reset();
    throw std::runtime_error(fmt::format("distributed: rank {} of {} could not join the process group at {}:{} within [distributed] timeout_s "
                                         "= {:g} s: {}",
                                         g.rank, g.world, addr, port, g.timeout_s, std::string(e.what()).substr(0, 400)));
  }
  log::info("distributed: rank {} of {} (local rank {}), {} process group over {}:{}{}", g.rank, g.world, g.local_rank, g.backend_name, addr,
            port, cuda ? fmt::format(", GPU {}", g.local_rank) : "");
}

void shutdown() {
  Group& g = group();
  g.backend.reset();
  g.store.reset();
  g = Group{};
}

bool active() { return static_cast<bool>(group().backend); }
int rank() { return group().rank; }
int world_size() { return group().world; }
int local_rank() { return group().local_rank; }
bool is_main() { return group().rank == 0; }
std::string backend_name() { return group().backend_name; }
double timeout_s() { return group().timeout_s; }

std::pair<std::size_t, std::size_t> shard_range(std::size_t n, int rank, int world) {
  const auto w = static_cast<std::size_t>(world), r = static_cast<std::size_t>(rank);
  const std::size_t base = n / w, extra = n % w;
  const std::size_t begin = r * base + std::min(r, extra);
  return {begin, begin + base + (r < extra ? 1 : 0)};
}

namespace {
bool& data_parallel_flag() {
  static bool on = true;
  return on;
}
bool splits_data() { return active() && data_parallel_flag(); }
}  // namespace

void set_data_parallel(bool on) { data_parallel_flag() = on; }
bool data_parallel() { return data_parallel_flag(); }

std::pair<std::size_t, std::size_t> shard_range(std::size_t n) {
  return data_parallel_flag() ? shard_range(n, rank(), world_size()) : std::pair<std::size_t, std::size_t>{0, n};
}

void barrier(const std::string& what) {
  if (!active()) return;
  // An all-reduce of one number rather than c10d's barrier: the same code for gloo and nccl, and the
  // NCCL barrier guesses a device.
  std::vector<torch::Tensor> one{to_backend(torch::ones({1}, torch::kFloat32))};
  collective("the barrier " + what, [&] { return group().backend->allreduce(one); });
}

void all_reduce_sum(std::vector<torch::Tensor>& tensors, const std::string& what, double bucket_mib) {
  if (!splits_data() || tensors.empty()) return;
  const auto bucket_bytes = static_cast<long long>(bucket_mib * 1024 * 1024);
  std::size_t first = 0;
  while (first < tensors.size()) {
    // One bucket: consecutive tensors of one dtype up to bucket_bytes (at least one tensor).
    std::size_t last = first + 1;
    long long bytes = tensors[first].numel() * static_cast<long long>(tensors[first].element_size());
    while (last < tensors.size() && tensors[last].scalar_type() == tensors[first].scalar_type() &&
           bytes + tensors[last].numel() * static_cast<long long>(tensors[last].element_size()) <= bucket_bytes) {
      bytes += tensors[last].numel() * static_cast<long long>(tensors[last].element_size());
      ++last;
    }
    std::vector<torch::Tensor> flat_parts;
    for (std::size_t i = first; i < last; ++i) flat_parts.push_back(tensors[i].reshape(-1));
    std::vector<torch::Tensor> flat{to_backend(torch::cat(flat_parts))};
    collective(what, [&] { return group().backend->allreduce(flat); });
    long long offset = 0;
    for (std::size_t i = first; i < last; ++i) {
      const long long n = tensors[i].numel();
      tensors[i].copy_(flat[0].narrow(0, offset, n).view(tensors[i].sizes()));
      offset += n;
    }
    first = last;
  }
}

std::vector<nlohmann::json> all_gather_json(const nlohmann::json& value, const std::string& what) {
  if (!splits_data()) return {value};
  const int world = world_size();
  const std::string text = value.dump();
  std::vector<torch::Tensor> length{to_backend(torch::tensor({static_cast<int64_t>(text.size())}, torch::kInt64))};
  std::vector<std::vector<torch::Tensor>> lengths(1);
  for (int r = 0; r < world; ++r) lengths[0].push_back(torch::empty_like(length[0]));
  collective(what + " (sizes)", [&] { return group().backend->allgather(lengths, length); });
  std::vector<int64_t> sizes;
  int64_t longest = 1;
  for (const auto& t : lengths[0]) sizes.push_back(t.cpu().item<int64_t>()), longest = std::max(longest, sizes.back());
  torch::Tensor bytes = torch::zeros({longest}, torch::kUInt8);
  std::memcpy(bytes.data_ptr<uint8_t>(), text.data(), text.size());
  std::vector<torch::Tensor> mine{to_backend(bytes)};
  std::vector<std::vector<torch::Tensor>> all(1);
  for (int r = 0; r < world; ++r) all[0].push_back(torch::empty_like(mine[0]));
  collective(what, [&] { return group().backend->allgather(all, mine); });
  std::vector<nlohmann::json> out;
  for (int r = 0; r < world; ++r) {
    const torch::Tensor received = all[0][static_cast<std::size_t>(r)].cpu().contiguous();
    out.push_back(nlohmann::json::parse(std::string(reinterpret_cast<const char*>(received.data_ptr<uint8_t>()),
                                                    static_cast<std::size_t>(sizes[static_cast<std::size_t>(r)]))));
  }
  return out;
}

nlohmann::json gather_list(const nlohmann::json& part, const std::string& what) {
  if (!splits_data()) return part;
  nlohmann::json joined = nlohmann::json::array();
  for (const auto& rank_part : all_gather_json(part, what))
    for (const auto& item : rank_part) joined.push_back(item);
  return joined;
}

namespace {

// One exchange: rows [sum(send), ...] contiguous on the backend's device.
torch::Tensor exchange(const torch::Tensor& rows, const std::vector<int64_t>& send_counts, const std::vector<int64_t>& recv_counts,
                       const std::string& what) {
  int64_t received = 0;
  for (int64_t n : recv_counts) received += n;
  std::vector<int64_t> out_shape = rows.sizes().vec();
  out_shape[0] = received;
  torch::Tensor input = to_backend(rows).contiguous();
  torch::Tensor output = torch::empty(out_shape, input.options());
  std::vector<int64_t> in_splits = send_counts, out_splits = recv_counts;
  collective(what, [&] { return group().backend->alltoall_base(output, input, out_splits, in_splits); });
  return output.to(rows.device());
}

struct AllToAll : torch::autograd::Function<AllToAll> {
  static torch::Tensor forward(torch::autograd::AutogradContext* ctx, const torch::Tensor& rows, std::vector<int64_t> send_counts,
                               std::vector<int64_t> recv_counts, std::string what) {
    ctx->saved_data["send"] = send_counts;
    ctx->saved_data["recv"] = recv_counts;
    ctx->saved_data["what"] = what;
    return exchange(rows, send_counts, recv_counts, what);
  }
  static torch::autograd::variable_list backward(torch::autograd::AutogradContext* ctx, torch::autograd::variable_list grads) {
    const auto send = ctx->saved_data["send"].toIntVector(), recv = ctx->saved_data["recv"].toIntVector();
    const std::string what = ctx->saved_data["what"].toStringRef() + " (backward)";
    return {exchange(grads[0], recv, send, what), torch::Tensor(), torch::Tensor(), torch::Tensor()};
  }
};

}  // namespace

std::vector<int64_t> all_to_all_counts(const std::vector<int64_t>& send_counts, const std::string& what) {
  const int world = world_size();
  if (static_cast<int>(send_counts.size()) != world)
    throw std::logic_error(fmt::format("all_to_all_counts: {} send counts for {} ranks", send_counts.size(), world));
  if (!active()) return send_counts;
  std::vector<int64_t> ones(static_cast<std::size_t>(world), 1);
  const torch::Tensor got = exchange(torch::tensor(send_counts, torch::kInt64), ones, ones, what + " (counts)").cpu();
  return {got.data_ptr<int64_t>(), got.data_ptr<int64_t>() + world};
}

torch::Tensor all_to_all(const torch::Tensor& rows, const std::vector<int64_t>& send_counts, const std::vector<int64_t>& recv_counts,
                         const std::string& what) {
  if (!active()) return rows;
  return AllToAll::apply(rows, send_counts, recv_counts, what);
}

std::string share_from_main(const std::string& key, const std::string& value) {
  if (!active()) return value;
  // The n-th call with `key` on one rank matches the n-th on every other (several runs in one process).
  static std::map<std::string, int> calls;
  const std::string full = fmt::format("moelab/{}/{}", key, calls[key]++);
  try {
    if (is_main()) {
      group().store->set(full, std::vector<uint8_t>(value.begin(), value.end()));
      return value;
    }
    const std::vector<uint8_t> got = group().store->get(full);
    return std::string(got.begin(), got.end());
  } catch (const std::exception& e) {
    throw DistributedError(describe_failure(fmt::format("reading '{}' from rank 0 (TCPStore)", key), e.what()));
  }
}

}  // namespace moelab::distributed
