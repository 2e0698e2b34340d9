// WordPiece tokenizer.json files (BERT and sentence-transformers encoders): BertNormalizer,
// BertPreTokenizer, greedy longest-match WordPiece and the WordPiece decoder.
#pragma once

#include "moelab/tokenizer.h"

#include <nlohmann/json.hpp>

#include <memory>
#include <string>

namespace moelab {

std::unique_ptr<Tokenizer> make_wordpiece_tokenizer(const std::string& file, const nlohmann::json& tokenizer_json);

}  // namespace moelab
