// A tokenizer and a model agree on the vocabulary: every id the tokenizer can produce (vocabulary,
// added tokens, the post_processor's special tokens) is a row of the model's embedding. Checked once
// where both are loaded, so forward passes need no per-token check (or host sync).
#pragma once

#include "moelab/model.h"
#include "moelab/tokenizer.h"

#include <cstdint>
#include <filesystem>

namespace moelab {

// The largest id `tokenizer` can produce, or -1 for an empty vocabulary.
std::int64_t largest_token_id(const Tokenizer& tokenizer);

// Throws naming both files, the offending id and its token when an id reaches model.vocab_size
// (config.json's vocab_size, which the loader has checked against the embedding's rows).
void check_tokenizer_fits_model(const Tokenizer& tokenizer, const std::filesystem::path& tokenizer_file, const ModelInfo& model,
                                const std::filesystem::path& model_folder);

}  // namespace moelab
