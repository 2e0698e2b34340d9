// safetensors: the header parser (SafetensorsFile) on a fuzzed file, then every tensor it accepts is
// read to its last byte, so an offset outside the mapping faults here rather than in a model load.
#include "fuzz_common.h"
#include "moelab/lib/safetensors.h"

extern "C" int LLVMFuzzerInitialize(int*, char***) {
  moelab::fuzz::quiet_logs();
  return 0;
}

extern "C" int LLVMFuzzerTestOneInput(const std::uint8_t* data, std::size_t size) {
  const auto file = moelab::fuzz::write_input("model.safetensors", {reinterpret_cast<const char*>(data), size});
  moelab::fuzz::run_reader([&] {
    moelab::SafetensorsFile st(file);
    for (const auto& name : st.names()) {
      torch::Tensor t = st.get(name);
      (void)st.dtype(name);
      const auto* bytes = static_cast<const volatile std::uint8_t*>(t.data_ptr());
      const std::size_t n = t.numel() * t.element_size();
      std::uint8_t sum = 0;
      for (std::size_t i = 0; i < n; ++i) sum ^= bytes[i];
      (void)sum;
    }
  });
  return 0;
}
