// Several processes over PyTorch's c10d (torchrun): the process group from RANK, WORLD_SIZE, LOCAL_RANK,
// MASTER_ADDR and MASTER_PORT, and the few collectives stages need (gradient all-reduce, gathers of
// results to every rank in one-process order, barriers). Without those variables (or WORLD_SIZE = 1
// under no launcher) every function here is the one-process identity: rank 0 of 1, no c10d object made.
// A collective that fails (a rank died) or waits longer than [distributed] timeout_s (a rank hangs)
// throws DistributedError naming the collective, this rank and the timeout.
#pragma once

#include <nlohmann/json.hpp>
#include <torch/types.h>

#include <cstddef>
#include <stdexcept>
#include <string>
#include <utility>
#include <vector>

namespace moelab {

template <class T>
class Options;

namespace distributed {

enum class Backend { automatic, gloo, nccl };

// The experiment file's [distributed] table.
struct Settings {
  Backend backend = Backend::automatic;  // auto: nccl when the model runs on CUDA and this LibTorch has it, else gloo
  double timeout_s = 600;                // a collective (and the start-up rendezvous) waits at most this long
};
const Options<Settings>& settings_options();

// A collective failed or timed out: the run stops (exit 1) with this message on every surviving rank.
struct DistributedError : std::runtime_error {
  using std::runtime_error::runtime_error;
};

// True when the launcher's variables are set (RANK and WORLD_SIZE; WORLD_SIZE may be 1).
bool launched();
// Creates the process group (TCPStore at MASTER_ADDR:MASTER_PORT, rank 0 serves it) when launched(),
// else does nothing. `cuda`: each rank binds to GPU LOCAL_RANK (and auto picks nccl when available).
// Throws naming the variable or backend that is missing or wrong.
void init(const Settings& settings, bool cuda);
// Destroys the process group (after the last collective of every rank: the host calls barrier() first).
void shutdown();

bool active();        // init() made a process group
int rank();           // 0 when not active
int world_size();     // 1 when not active
int local_rank();     // LOCAL_RANK, 0 when not active
bool is_main();       // rank() == 0: the one rank that writes run-folder files
std::string backend_name();  // "gloo", "nccl", or "none"
bool built_with(Backend backend);  // this LibTorch build has that c10d process group (automatic: either)
double timeout_s();

// Whether the ranks split the data (the default). Expert placement ([model] placement = "experts") turns it
// off: every rank then runs every example, in lockstep, and the data-parallel helpers below (this rank's
// shard_range, all_reduce_sum, all_gather_json, gather_list) act as in one process.
void set_data_parallel(bool on);
bool data_parallel();

// [begin, end) of `n` items for `rank` of `world`: contiguous, in order, sizes differing by at most one
// (the first n % world ranks take one more); concatenated over ranks 0..world-1 they are 0..n-1.
std::pair<std::size_t, std::size_t> shard_range(std::size_t n, int rank, int world);
std::pair<std::size_t, std::size_t> shard_range(std::size_t n);  // this rank's

// Every rank waits for every other (`what` names the point in errors).
void barrier(const std::string& what);
// Sums `tensors` (same shapes and dtypes on every rank, any device the backend takes) over ranks in place;
// flattened into buckets of at most bucket_mib, one all-reduce each.
void all_reduce_sum(std::vector<torch::Tensor>& tensors, const std::string& what, double bucket_mib = 25);
// Every rank's `value`, indexed by rank, on every rank.
std::vector<nlohmann::json> all_gather_json(const nlohmann::json& value, const std::string& what);
// Each rank's part of a list (its shard, in order) joined in rank order: the one-process list.
nlohmann::json gather_list(const nlohmann::json& part, const std::string& what);
// Expert parallelism's exchange of rows between all ranks. all_to_all_counts: every rank tells every other
// how many rows it will send it (send_counts[r] for rank r); returns the counts this rank receives, by
// rank. all_to_all: `rows` [N, ...] holds send_counts[r] rows for rank r, in rank order; returns the rows
// every rank sent this one, in rank order, on rows' device. Differentiable: the backward sends the
// gradients back. Without a process group both give back what they were given. Every rank must call
// them, in the same order.
std::vector<int64_t> all_to_all_counts(const std::vector<int64_t>& send_counts, const std::string& what);
torch::Tensor all_to_all(const torch::Tensor& rows, const std::vector<int64_t>& send_counts, const std::vector<int64_t>& recv_counts,
                         const std::string& what);

// Rank 0's `value` on every rank (through the TCPStore); every rank calls it with the same keys in the same order.
std::string share_from_main(const std::string& key, const std::string& value);

}  // namespace distributed
}  // namespace moelab
