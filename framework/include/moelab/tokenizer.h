// A Hugging Face tokenizer.json in C++: byte-level BPE with Split/ByteLevel pre-tokenizers, NFC,
// added and special tokens, and the ByteLevel decoder; SentencePiece-style BPE (Prepend/Replace
// normalizers, byte_fallback, Replace/ByteFallback/Fuse/Strip decoders: Mistral, Mixtral, Llama 2);
// and WordPiece (BERT-style encoders); the post_processor's special tokens on request. Ids are
// identical to HF `tokenizers`; anything in a file it does not implement is an error naming the
// component, never a silent difference.
#pragma once

#include <cstdint>
#include <filesystem>
#include <memory>
#include <string>
#include <string_view>
#include <vector>

namespace moelab {

class Tokenizer {
 public:
  static std::unique_ptr<Tokenizer> from_file(const std::filesystem::path& tokenizer_json);
  virtual ~Tokenizer();

  // Ids of `text` (UTF-8) with added tokens matched first. add_special_tokens wraps them as the file's
  // post_processor says, as HF's `tokenizer(text)` does (Llama 2, Mistral: BOS first); without it
  // nothing is added (HF's add_special_tokens=False, for scoring continuations).
  std::vector<std::int64_t> encode(std::string_view text, bool add_special_tokens = false) const;
  // What add_special_tokens adds, for logs: "<s> (id 1) prepended", "[CLS] (id 101) prepended and
  // [SEP] (id 102) appended", or "nothing added".
  const std::string& special_tokens_added() const { return special_description_; }
  // Text of `ids`; invalid UTF-8 from partial byte tokens becomes U+FFFD and ids outside the
  // vocabulary are skipped, as in HF.
  virtual std::string decode(const std::vector<std::int64_t>& ids, bool skip_special_tokens = false) const = 0;
  // Id of a token (vocabulary or added), or -1.
  virtual std::int64_t token_id(std::string_view token) const = 0;
  virtual std::size_t vocab_size() const = 0;

 private:
  // The text's ids, without special tokens.
  virtual std::vector<std::int64_t> encode_text(std::string_view text) const = 0;

  std::vector<std::int64_t> special_prefix_, special_suffix_;  // from the post_processor
  std::string special_description_ = "nothing added";
};

}  // namespace moelab
