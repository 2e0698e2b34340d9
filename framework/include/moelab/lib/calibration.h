// Token windows from raw text, for GPTQ calibration, router finetuning on calibration text and
// perplexity: a dataset's documents joined by blank lines and tokenized once into one stream, as HF's
// tokenizer("\n\n".join(texts)) does (add_special_tokens: the post_processor's tokens, once).
#pragma once

#include "moelab/dataset.h"
#include "moelab/tokenizer.h"

#include <torch/types.h>

#include <cstdint>
#include <string>

namespace moelab {

// [n] int64; logs what add_special_tokens added.
torch::Tensor token_stream(const Dataset& dataset, const Tokenizer& tokenizer, bool add_special_tokens);

// `count` windows [count, length] starting at seeded uniform positions of the stream (GPTQ's sampling).
// A stream shorter than length + 1 tokens is an error naming `what`.
torch::Tensor random_windows(const torch::Tensor& stream, long long count, long long length, std::uint64_t seed, const std::string& what);

}  // namespace moelab
