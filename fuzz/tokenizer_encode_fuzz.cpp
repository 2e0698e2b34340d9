// Tokenizer::encode on fuzzed text with a fixed real tokenizer: the tiny model's GPT-NeoX-style
// tokenizer.json, or $MOELAB_FUZZ_TOKENIZER (any tokenizer.json). Any text, valid UTF-8 or not, must
// encode or be refused, to the same ids every time; printable ASCII must decode back to itself (the
// tiny model's byte-level BPE loses nothing).
#include "fuzz_common.h"
#include "moelab/tokenizer.h"

#include <algorithm>
#include <cstdlib>
#include <memory>

namespace {
std::unique_ptr<moelab::Tokenizer> tokenizer;
bool round_trip = false;
}  // namespace

extern "C" int LLVMFuzzerInitialize(int*, char***) {
  moelab::fuzz::quiet_logs();
  const char* chosen = std::getenv("MOELAB_FUZZ_TOKENIZER");
  tokenizer = moelab::Tokenizer::from_file(chosen ? chosen : MOELAB_SOURCE_DIR "/framework/model/tiny/tokenizer.json");
  round_trip = !chosen;
  return 0;
}

extern "C" int LLVMFuzzerTestOneInput(const std::uint8_t* data, std::size_t size) {
  const std::string text(reinterpret_cast<const char*>(data), size);
  moelab::fuzz::run_reader([&] {
    for (bool special : {false, true}) {
      const std::vector<std::int64_t> ids = tokenizer->encode(text, special);
      for (std::int64_t id : ids)
        if (id < 0 || id >= static_cast<std::int64_t>(tokenizer->vocab_size()) + 1024) {
          std::fprintf(stderr, "encode gave id %lld, vocabulary %zu\n", static_cast<long long>(id), tokenizer->vocab_size());
          std::abort();
        }
      if (tokenizer->encode(text, special) != ids) {  // the second call may come from the pre-token cache
        std::fprintf(stderr, "a second encode of the same text gave other ids\n");
        std::abort();
      }
      const std::string back = tokenizer->decode(ids, false);
      const bool printable = std::all_of(text.begin(), text.end(), [](char c) { return c >= 0x20 && c < 0x7f; });
      if (round_trip && !special && printable && back != text) {
        std::fprintf(stderr, "decode(encode(text)) differs: \"%s\" -> \"%s\"\n", text.c_str(), back.c_str());
        std::abort();
      }
    }
  });
  return 0;
}
