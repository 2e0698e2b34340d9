// Loglikelihood scoring as lm-evaluation-harness does it (HFLM._encode_pair, _loglikelihood_tokens and
// the multiple-choice process_results), so acc and acc_norm are comparable with published numbers.
#pragma once

#include "moelab/model.h"
#include "moelab/tokenizer.h"

#include <cstdint>
#include <string>
#include <string_view>
#include <vector>

namespace moelab {

// One request: the continuation's ids are scored after the context's.
struct LoglikRequest {
  std::vector<std::int64_t> context, continuation;
};

struct LoglikResult {
  double loglik = 0;       // summed log-probability of the continuation's tokens
  bool is_greedy = false;  // every continuation token is the argmax at its position
};

// lm-eval's _encode_pair: the context's trailing whitespace moves to the front of the continuation;
// context + continuation and the context are each encoded whole, and the continuation's ids are the
// whole's ids after the context's. Without add_bos_token nothing is added; with it both texts get the
// tokenizer's special tokens (lm-eval's add_bos_token). An empty context is an error (lm-eval would
// score after a BOS/EOS token).
LoglikRequest encode_pair(const Tokenizer& tokenizer, std::string_view context, std::string_view continuation, bool add_bos_token = false);

// Scores each request as lm-eval does: the continuation's tokens after (context + continuation)[:-1],
// keeping its last max_length tokens; results come back in request order, log-probabilities in float32
// (float64 for a float64 model) summed in float64. With shared_prefix, requests whose kept context ids
// are identical (a question's choices, where lm-eval's split agrees) share one run of the context in a
// KV cache that their continuations read in place (KVCache::replicas), so the vocabulary projection
// covers continuation positions only; groups of equal size are batched, at most batch_size continuation
// rows per forward. Without it, each request is one right-padded row, batch_size rows per forward,
// longest first. Both agree within float rounding, except past max_position_embeddings under rope_type
// "dynamic", where cached keys keep the rotation of the context's length (as in generation).
std::vector<LoglikResult> score_requests(Model& model, const std::vector<LoglikRequest>& requests, std::size_t batch_size,
                                         std::size_t max_length, bool shared_prefix = true);

// lm-eval's multiple-choice predictions: acc takes the highest loglik, acc_norm the highest loglik per
// character (Python len) of the choice text; the first one wins a tie, as numpy's argmax.
std::size_t acc_prediction(const std::vector<double>& logliks);
std::size_t acc_norm_prediction(const std::vector<double>& logliks, const std::vector<std::string>& choice_texts);

}  // namespace moelab
