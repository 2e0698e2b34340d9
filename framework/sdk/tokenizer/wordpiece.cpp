#include "wordpiece.h"

#include "token_id.h"
#include "unicode.h"

#include <fmt/format.h>
#include <unicode/locid.h>
#include <unicode/normalizer2.h>
#include <unicode/uchar.h>
#include <unicode/unistr.h>

#include <stdexcept>
#include <unordered_map>

namespace moelab {

namespace {

using nlohmann::json;
using Id = std::int64_t;

void append_utf8(std::string& out, char32_t c) {
  icu::UnicodeString(static_cast<UChar32>(c)).toUTF8String(out);
}

bool is_chinese(char32_t c) {
  return (c >= 0x4E00 && c <= 0x9FFF) || (c >= 0x3400 && c <= 0x4DBF) || (c >= 0x20000 && c <= 0x2A6DF) ||
         (c >= 0x2A700 && c <= 0x2B73F) || (c >= 0x2B740 && c <= 0x2B81F) || (c >= 0x2B920 && c <= 0x2CEAF) ||
         (c >= 0xF900 && c <= 0xFAFF) || (c >= 0x2F800 && c <= 0x2FA1F);
}
bool is_whitespace(char32_t c) { return c == '\t' || c == '\n' || c == '\r' || u_isUWhiteSpace(static_cast<UChar32>(c)); }
bool is_control(char32_t c) {
  if (c == '\t' || c == '\n' || c == '\r') return false;
  int8_t t = u_charType(static_cast<UChar32>(c));
  return t == U_CONTROL_CHAR || t == U_FORMAT_CHAR || t == U_SURROGATE || t == U_PRIVATE_USE_CHAR || t == U_UNASSIGNED;
}
bool is_punctuation(char32_t c) {
  if (c < 128 && std::ispunct(static_cast<int>(c))) return true;
  int8_t t = u_charType(static_cast<UChar32>(c));
  return t == U_DASH_PUNCTUATION || t == U_START_PUNCTUATION || t == U_END_PUNCTUATION || t == U_CONNECTOR_PUNCTUATION ||
         t == U_OTHER_PUNCTUATION || t == U_INITIAL_PUNCTUATION || t == U_FINAL_PUNCTUATION;
}

std::vector<char32_t> code_points(std::string_view text) {
  std::vector<char32_t> out;
  for (std::size_t i = 0; i < text.size();) out.push_back(unicode::next_code_point(text, i));
  return out;
}

class WordPieceTokenizer final : public Tokenizer {
 public:
  explicit WordPieceTokenizer(const JsonValue& j) : file_(j.origin()) {
    const JsonValue m = j["model"];
    if (!m.has("unk_token") || !m.json()["unk_token"].is_string()) fail("model", "WordPiece needs an unk_token");
    if (!m.has("vocab") || !m.json()["vocab"].is_object()) fail("model", "WordPiece needs a \"vocab\" object");
    const JsonValue vocab = m["vocab"];
    for (const auto& [token, value] : vocab.json().items()) add(token, checked_token_id(value, [&, &token = token] { return vocab.entry(token); }));
    prefix_ = m.get_or<std::string>("continuing_subword_prefix", "##");
    max_chars_ = m.get_or<std::size_t>("max_input_chars_per_word", 100);
    unk_ = token_id(m["unk_token"].get<std::string>());
    if (unk_ < 0) fail("model", "unk_token is not in the vocab");
    const JsonValue n = j.optional("normalizer");
    if (!n.is_null()) {
      const std::string type = n.expect_object().get_or<std::string>("type", "");
      if (type != "BertNormalizer") fail("normalizer", fmt::format("type \"{}\" is not supported (BertNormalizer)", type));
      clean_text_ = n.get_or("clean_text", true);
      chinese_ = n.get_or("handle_chinese_chars", true);
      lowercase_ = n.get_or("lowercase", true);
      strip_accents_ = n.get_or("strip_accents", lowercase_);
    } else {
      clean_text_ = chinese_ = lowercase_ = strip_accents_ = false;
    }
    const JsonValue p = j.optional("pre_tokenizer");
    const std::string pre_tokenizer = p.is_null() ? "none" : p.expect_object().get_or<std::string>("type", "");
    if (pre_tokenizer != "BertPreTokenizer") fail("pre_tokenizer", fmt::format("{} is not supported with WordPiece (BertPreTokenizer)", pre_tokenizer));
    const JsonValue d = j.optional("decoder");
    const std::string decoder = d.is_null() ? "WordPiece" : d.expect_object().get_or<std::string>("type", "");
    if (decoder != "WordPiece") fail("decoder", fmt::format("type \"{}\" is not supported (WordPiece)", decoder));
    cleanup_ = d.is_null() ? true : d.get_or("cleanup", true);
    for (const JsonValue& t : j.optional("added_tokens").elements()) {
      const std::string content = t.expect_object()["content"].get<std::string>();
      if (t.get_or("normalized", false)) fail("added_tokens", fmt::format("\"{}\" is normalized: not supported", content));
      if (content.empty()) fail("added_tokens", "an added token is empty");
      const Id id = checked_token_id(t["id"].json(), [&] { return t["id"]; });
      added_.emplace_back(content, id);
      add(content, id);
      special_[id] = t.get_or("special", false);
    }
  }

  std::vector<Id> encode_text(std::string_view text) const override {
    std::vector<Id> ids;
    std::size_t plain = 0;
    for (std::size_t i = 0; i < text.size();) {
      std::size_t hit = 0;
      Id hit_id = -1;
      for (const auto& [content, id] : added_)
        if (content.size() > hit && text.compare(i, content.size(), content) == 0) hit = content.size(), hit_id = id;
      if (hit == 0) {
        ++i;
        continue;
      }
      encode_plain(text.substr(plain, i - plain), ids);
      ids.push_back(hit_id);
      i += hit;
      plain = i;
    }
    encode_plain(text.substr(plain), ids);
    return ids;
  }

  std::string decode(const std::vector<Id>& ids, bool skip_special_tokens) const override {
    std::string out;
    for (Id id : ids) {
      if (id < 0 || static_cast<std::size_t>(id) >= tokens_.size()) continue;
      if (skip_special_tokens && special_.count(id) && special_.at(id)) continue;
      const std::string& t = tokens_[id];
      if (t.compare(0, prefix_.size(), prefix_) == 0 && !out.empty()) out += t.substr(prefix_.size());
      else out += (out.empty() ? "" : " ") + t;
    }
    if (!cleanup_) return out;
    for (const auto& [from, to] : std::vector<std::pair<std::string, std::string>>{
             {" .", "."}, {" ?", "?"}, {" !", "!"}, {" ,", ","}, {" ' ", "'"}, {" n't", "n't"}, {" 'm", "'m"},
             {" do not", " don't"}, {" 's", "'s"}, {" 've", "'ve"}, {" 're", "'re"}})
      for (std::size_t at = out.find(from); at != std::string::npos; at = out.find(from, at + to.size())) out.replace(at, from.size(), to);
    return out;
  }

  Id token_id(std::string_view token) const override {
    auto it = vocab_.find(std::string(token));
    return it == vocab_.end() ? -1 : it->second;
  }
  std::size_t vocab_size() const override { return tokens_.size(); }

 private:
  void add(const std::string& token, Id id) {
    vocab_[token] = id;
    if (static_cast<std::size_t>(id) >= tokens_.size()) tokens_.resize(id + 1);
    tokens_[id] = token;
  }

  [[noreturn]] void fail(const std::string& component, const std::string& what) const {
    throw std::runtime_error(fmt::format("{}: {}: {}", file_, component, what));
  }

  std::string normalize(std::string_view text) const {
    std::string out;
    for (char32_t c : code_points(text)) {
      if (clean_text_ && (c == 0 || c == 0xFFFD || is_control(c))) continue;
      if (clean_text_ && is_whitespace(c)) c = ' ';
      if (chinese_ && is_chinese(c)) {
        out += ' ';
        append_utf8(out, c);
        out += ' ';
      } else {
        append_utf8(out, c);
      }
    }
    if (strip_accents_) {
      UErrorCode status = U_ZERO_ERROR;
      icu::UnicodeString decomposed = icu::Normalizer2::getNFDInstance(status)->normalize(icu::UnicodeString::fromUTF8(out), status);
      std::string kept;
      for (int32_t i = 0; i < decomposed.length(); i = decomposed.moveIndex32(i, 1)) {
        UChar32 c = decomposed.char32At(i);
        if (u_charType(c) != U_NON_SPACING_MARK) append_utf8(kept, static_cast<char32_t>(c));
      }
      out = kept;
    }
    if (lowercase_) {
      std::string lower;
      for (char32_t c : code_points(out)) icu::UnicodeString(static_cast<UChar32>(c)).toLower(icu::Locale::getRoot()).toUTF8String(lower);
      out = lower;
    }
    return out;
  }

  void encode_plain(std::string_view text, std::vector<Id>& ids) const {
    if (text.empty()) return;
    // BertPreTokenizer: whitespace separates words, every punctuation character is a word of its own.
    std::vector<std::vector<char32_t>> words(1);
    for (char32_t c : code_points(normalize(text))) {
      if (is_whitespace(c)) {
        if (!words.back().empty()) words.emplace_back();
      } else if (is_punctuation(c)) {
        if (!words.back().empty()) words.emplace_back();
        words.back().push_back(c);
        words.emplace_back();
      } else {
        words.back().push_back(c);
      }
    }
    for (const auto& word : words)
      if (!word.empty()) encode_word(word, ids);
  }

  void encode_word(const std::vector<char32_t>& word, std::vector<Id>& ids) const {
    if (word.size() > max_chars_) {
      ids.push_back(unk_);
      return;
    }
    std::vector<Id> pieces;
    for (std::size_t start = 0; start < word.size();) {
      Id found = -1;
      std::size_t end = word.size();
      for (; end > start; --end) {
        std::string piece = start > 0 ? prefix_ : "";
        for (std::size_t i = start; i < end; ++i) append_utf8(piece, word[i]);
        auto it = vocab_.find(piece);
        if (it != vocab_.end()) {
          found = it->second;
          break;
        }
      }
      if (found < 0) {
        ids.push_back(unk_);
        return;
      }
      pieces.push_back(found);
      start = end;
    }
    ids.insert(ids.end(), pieces.begin(), pieces.end());
  }

  std::string file_;
  std::unordered_map<std::string, Id> vocab_;
  std::vector<std::string> tokens_;
  std::vector<std::pair<std::string, Id>> added_;
  std::unordered_map<Id, bool> special_;
  std::string prefix_;
  std::size_t max_chars_ = 100;
  Id unk_ = -1;
  bool clean_text_ = true, chinese_ = true, lowercase_ = true, strip_accents_ = true, cleanup_ = true;
};

}  // namespace

std::unique_ptr<Tokenizer> make_wordpiece_tokenizer(const JsonValue& tokenizer_json) {
  return std::make_unique<WordPieceTokenizer>(tokenizer_json);
}

}  // namespace moelab
