// RoMA routing-results JSON: read_routing_results on a fuzzed file; what it accepts must be written
// and read back to the same records.
#include "fuzz_common.h"
#include "moelab/lib/routing_results.h"

extern "C" int LLVMFuzzerInitialize(int*, char***) {
  moelab::fuzz::quiet_logs();
  return 0;
}

extern "C" int LLVMFuzzerTestOneInput(const std::uint8_t* data, std::size_t size) {
  const auto file = moelab::fuzz::write_input("routing_results.json", {reinterpret_cast<const char*>(data), size});
  moelab::fuzz::run_reader([&] {
    const std::vector<moelab::RoutingResult> results = moelab::read_routing_results(file);
    const auto again_file = moelab::fuzz::scratch() / "again.json";
    moelab::write_routing_results(again_file, results);
    const std::vector<moelab::RoutingResult> again = moelab::read_routing_results(again_file);
    bool same = again.size() == results.size();
    for (std::size_t i = 0; same && i < again.size(); ++i)
      same = again[i].key == results[i].key && again[i].routing == results[i].routing && again[i].is_correct == results[i].is_correct &&
             again[i].input_text == results[i].input_text && again[i].token_id == results[i].token_id;
    if (!same) {
      std::fprintf(stderr, "routing results written and read back differ\n");
      std::abort();
    }
  });
  return 0;
}
