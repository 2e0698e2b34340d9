// config.json: read_model_config (the common keys, the architecture's hook, the key checks and the
// ConfigKeys reader) on a fuzzed file, then the rotary frequencies its rope settings give.
#include "architecture.h"
#include "fuzz_common.h"
#include "rope.h"

#include <algorithm>

extern "C" int LLVMFuzzerInitialize(int*, char***) {
  moelab::fuzz::quiet_logs();
  return 0;
}

extern "C" int LLVMFuzzerTestOneInput(const std::uint8_t* data, std::size_t size) {
  const auto file = moelab::fuzz::write_input("model/config.json", {reinterpret_cast<const char*>(data), size});
  moelab::fuzz::run_reader([&] {
    const moelab::ModelConfig c = moelab::read_model_config(file.parent_path());
    const int64_t dim = c.arch.mla ? c.qk_rope_head_dim : c.head_dim;
    // A config may rightly describe a huge model; only sizes a test model could have are computed.
    if (dim > 0 && dim <= 4096) {
      (void)moelab::rope_inv_freq(c.rope, dim);
      if (c.rope.type == "dynamic") (void)moelab::dynamic_inv_freq(c.rope, dim, torch::tensor({int64_t{1}, std::min<int64_t>(c.rope.max_positions, int64_t{1} << 40) + 7}));
    }
  });
  return 0;
}
