// tokenizer.json: Tokenizer::from_file on a fuzzed file (BPE, SentencePiece-style or WordPiece, with
// its normalizers, pre-tokenizers, decoders, added tokens and post_processor), then a few fixed texts
// encoded with and without special tokens and decoded back.
#include "fuzz_common.h"
#include "moelab/tokenizer.h"

extern "C" int LLVMFuzzerInitialize(int*, char***) {
  moelab::fuzz::quiet_logs();
  return 0;
}

extern "C" int LLVMFuzzerTestOneInput(const std::uint8_t* data, std::size_t size) {
  static const char* const kTexts[] = {"Hello world! It's 2024.", "  leading spaces\tand\ttabs\n\nnew lines ",
                                       "<|endoftext|><s>[CLS] café naïve 日本語 🙂", "a", ""};
  const auto file = moelab::fuzz::write_input("tokenizer.json", {reinterpret_cast<const char*>(data), size});
  moelab::fuzz::run_reader([&] {
    const auto tokenizer = moelab::Tokenizer::from_file(file);
    for (const char* text : kTexts) {
      for (bool special : {false, true}) {
        const std::vector<std::int64_t> ids = tokenizer->encode(text, special);
        (void)tokenizer->decode(ids, false);
        (void)tokenizer->decode(ids, true);
      }
      (void)tokenizer->token_id(text);
    }
    (void)tokenizer->decode({-1, 0, 1, static_cast<std::int64_t>(tokenizer->vocab_size()), INT64_MAX}, false);
  });
  return 0;
}
