// WordPiece tokenizer.json files (BERT and sentence-transformers encoders): BertNormalizer,
// BertPreTokenizer, greedy longest-match WordPiece and the WordPiece decoder.
#pragma once

#include "moelab/lib/json_read.h"
#include "moelab/tokenizer.h"

#include <memory>
#include <string>

namespace moelab {

// Errors name tokenizer_json's origin (the file) and the key.
std::unique_ptr<Tokenizer> make_wordpiece_tokenizer(const JsonValue& tokenizer_json);

}  // namespace moelab
