// A decoding batch's KV cache checked against the memory of the model's device before any work: a batch
// that cannot fit stops at once with what it needs, what there is and the keys that set it, rather than
// running out of memory in the middle of generation.
#pragma once

#include "moelab/model.h"

#include <cstdint>
#include <string>

namespace moelab {

// Throws when `rows` x `positions` of the model's KV cache (Model::kv_cache_bytes_per_position) do not fit:
// on CUDA an allocation of that size is tried (and freed; LibTorch's caching allocator keeps it for the
// cache), on the CPU it is compared with /proc/meminfo's MemAvailable. `keys` names the config keys that
// set rows and positions, for the error. Returns the bytes needed.
int64_t require_kv_cache_fits(const Model& model, int64_t rows, int64_t positions, const std::string& keys);

}  // namespace moelab
