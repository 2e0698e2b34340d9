#include "moelab/tokenizer.h"

#include "moelab/lib/json_read.h"
#include "moelab/lib/utf8.h"
#include "post_processor.h"
#include "token_id.h"
#include "unicode.h"
#include "wordpiece.h"

#define PCRE2_CODE_UNIT_WIDTH 8
#include <fmt/format.h>
#include <nlohmann/json.hpp>
#include <pcre2.h>

#include <algorithm>
#include <cctype>
#include <limits>
#include <queue>
#include <map>
#include <mutex>
#include <stdexcept>
#include <unordered_map>

namespace moelab {

Tokenizer::~Tokenizer() = default;

std::vector<std::int64_t> Tokenizer::encode(std::string_view text, bool add_special_tokens) const {
  // The regex engine is told the text is valid UTF-8 (no per-match check); invalid bytes would be undefined behaviour.
  if (std::size_t bad = first_invalid_utf8(text); bad != std::string_view::npos)
    throw std::runtime_error(fmt::format("tokenizer: the text is not valid UTF-8: byte 0x{:02X} at offset {} starts no UTF-8 character",
                                         static_cast<unsigned char>(text[bad]), bad));
  std::vector<std::int64_t> ids = encode_text(text);
  if (!add_special_tokens) return ids;
  ids.insert(ids.begin(), special_prefix_.begin(), special_prefix_.end());
  ids.insert(ids.end(), special_suffix_.begin(), special_suffix_.end());
  return ids;
}

namespace {

using nlohmann::json;
using Id = std::int64_t;

// GPT-2's pre-tokenizer pattern, used by ByteLevel when use_regex is true.
constexpr const char* kGpt2Pattern = R"('s|'t|'re|'ve|'m|'ll|'d| ?\p{L}+| ?\p{N}+| ?[^\s\p{L}\p{N}]+|\s+(?!\S)|\s+)";

class Regex {
 public:
  Regex(const std::string& pattern, const std::string& where) {
    int error = 0;
    PCRE2_SIZE offset = 0;
    code_ = pcre2_compile(reinterpret_cast<PCRE2_SPTR>(pattern.data()), pattern.size(), PCRE2_UTF | PCRE2_UCP, &error, &offset, nullptr);
    if (!code_) {
      PCRE2_UCHAR message[256];
      pcre2_get_error_message(error, message, sizeof message);
      throw std::runtime_error(fmt::format("{}: regex /{}/ does not compile at offset {}: {}", where, pattern, offset,
                                           reinterpret_cast<const char*>(message)));
    }
    pcre2_jit_compile(code_, PCRE2_JIT_COMPLETE);
    data_ = pcre2_match_data_create_from_pattern(code_, nullptr);
  }
  ~Regex() {
    pcre2_match_data_free(data_);
    pcre2_code_free(code_);
  }
  Regex(const Regex&) = delete;
  Regex& operator=(const Regex&) = delete;

  // Calls f(begin, end) for each non-empty match, left to right.
  template <class F>
  void for_each_match(std::string_view text, F&& f) const {
    std::lock_guard lock(mutex_);
    std::size_t start = 0;
    while (start <= text.size()) {
      int rc = pcre2_match(code_, reinterpret_cast<PCRE2_SPTR>(text.data()), text.size(), start, PCRE2_NO_UTF_CHECK, data_, nullptr);
      if (rc < 0) break;
      PCRE2_SIZE* ovector = pcre2_get_ovector_pointer(data_);
      std::size_t begin = ovector[0], end = ovector[1];
      if (end == begin) {  // skip an empty match by one character
        std::size_t next = begin;
        if (next >= text.size()) break;
        unicode::next_code_point(text, next);
        start = next;
        continue;
      }
      f(begin, end);
      start = end;
    }
  }

 private:
  pcre2_code* code_ = nullptr;
  pcre2_match_data* data_ = nullptr;
  mutable std::mutex mutex_;
};

// A pre-tokenizer step: splits each piece of text into smaller pieces.
struct Step {
  enum class Kind { split, byte_level, metaspace } kind;
  std::unique_ptr<Regex> regex;  // split pattern, or GPT-2's for ByteLevel with use_regex
  bool add_prefix_space = false;
  // Metaspace: spaces become `replacement`, which is prepended ("always", or "first": only to text at
  // the start of the input) unless already there; with split, pieces start at each replacement.
  std::string replacement, prepend_scheme;
  bool split = false;
};

// A normalizer step (applied to each piece of text between added tokens, as HF does).
struct Normalizer {
  enum class Kind { nfc, prepend, replace } kind;
  std::string text, content;  // prepend: text; replace: text -> content
};

// A decoder step over the list of token strings.
struct Decoder {
  enum class Kind { byte_level, replace, byte_fallback, fuse, strip, metaspace } kind;
  std::string text, content;  // replace: text -> content; strip: text is the character; metaspace: text is the replacement
  int start = 0, stop = 0;    // strip: how many to remove at each end
};

std::string replace_all(const std::string& s, const std::string& from, const std::string& to) {
  if (from.empty()) return s;
  std::string out;
  out.reserve(s.size());
  std::size_t last = 0;
  for (std::size_t at = s.find(from); at != std::string::npos; at = s.find(from, last)) {
    out.append(s, last, at - last).append(to);
    last = at + from.size();
  }
  return out.append(s, last, std::string::npos);
}

// "<0xAB>" -> 0xAB, or -1.
int byte_token(const std::string& token) {
  if (token.size() != 6 || token.compare(0, 3, "<0x") != 0 || token[5] != '>' || !std::isxdigit(token[3]) || !std::isxdigit(token[4])) return -1;
  return std::stoi(token.substr(3, 2), nullptr, 16);
}

struct AddedToken {
  std::string content;
  Id id;
  bool special;
};

std::string describe(const json& j) { return j.dump().substr(0, 160); }

class BpeTokenizer final : public Tokenizer {
 public:
  explicit BpeTokenizer(const JsonValue& j) : file_(j.origin()) {
    if (!j.json().is_object() || !j.has("model")) fail("top level", "expected an object with a \"model\"");
    read_model(j["model"].expect_object());
    read_normalizer(j.optional("normalizer"));
    read_pre_tokenizer(j.optional("pre_tokenizer"));
    read_decoder(j.optional("decoder"));
    read_added_tokens(j.optional("added_tokens"));
  }

  std::vector<Id> encode_text(std::string_view text) const override {
    std::vector<Id> ids;
    std::size_t plain_start = 0;
    for (std::size_t i = 0; i < text.size();) {
      const AddedToken* hit = match_added(text, i);
      if (!hit) {
        ++i;
        continue;
      }
      encode_plain(text.substr(plain_start, i - plain_start), ids, plain_start == 0);
      ids.push_back(hit->id);
      i += hit->content.size();
      plain_start = i;
    }
    encode_plain(text.substr(plain_start), ids, plain_start == 0);
    return ids;
  }

  std::string decode(const std::vector<Id>& ids, bool skip_special_tokens) const override {
    std::vector<std::string> tokens;
    for (Id id : ids) {
      if (id < 0 || static_cast<std::size_t>(id) >= id_to_token_.size() || id_to_token_[id] == nullptr) continue;  // as HF: skipped
      if (skip_special_tokens && special_ids_.count(id)) continue;
      tokens.push_back(*id_to_token_[id]);
    }
    for (const auto& d : decoders_) tokens = apply(d, std::move(tokens));
    std::string out;
    for (std::size_t i = 0; i < tokens.size(); ++i) out += (i > 0 && decoders_.empty() ? " " : "") + tokens[i];
    return out;
  }

  Id token_id(std::string_view token) const override {
    auto it = vocab_.find(std::string(token));
    return it == vocab_.end() ? -1 : it->second;
  }
  std::size_t vocab_size() const override { return id_to_token_.size(); }

 private:
  [[noreturn]] void fail(const std::string& component, const std::string& what) const {
    throw std::runtime_error(fmt::format("{}: {}: {}", file_, component, what));
  }

  void read_model(const JsonValue& m) {
    std::string type = m.get_or<std::string>("type", "");
    if (type != "BPE") fail("model", fmt::format("type \"{}\" is not supported (BPE, WordPiece)", type));
    byte_fallback_ = m.get_or("byte_fallback", false);
    fuse_unk_ = m.get_or("fuse_unk", false);
    for (const char* key : {"continuing_subword_prefix", "end_of_word_suffix"})
      if (m.get_or<std::string>(key, "") != "") fail("model", fmt::format("{} is not supported", key));
    if (m.get_or("dropout", 0.0) > 0) fail("model", "BPE dropout is not supported");
    ignore_merges_ = m.get_or("ignore_merges", false);
    if (!m.has("vocab") || !m.json()["vocab"].is_object()) fail("model", "needs a \"vocab\" object");
    const JsonValue vocab = m["vocab"];
    for (const auto& [token, id] : vocab.json().items()) add_token(token, checked_token_id(id, [&, &token = token] { return vocab.entry(token); }));
    if (m.has("unk_token")) {
      const std::string unk = m["unk_token"].get<std::string>();
      unk_ = token_id(unk);
      if (unk_ < 0) fail("model", fmt::format("unk_token \"{}\" is not in the vocab", unk));
    }
    Id rank = 0;
    for (const JsonValue& merge : m.optional("merges").elements()) {
      std::string left, right;
      if (merge.json().is_string()) {
        std::string s = merge.get<std::string>();
        auto space = s.find(' ');
        if (space == std::string::npos) fail("model.merges", fmt::format("merge \"{}\" is not \"left right\"", s));
        left = s.substr(0, space);
        right = s.substr(space + 1);
      } else if (merge.json().is_array() && merge.size() == 2) {
        left = merge[0].get<std::string>();
        right = merge[1].get<std::string>();
      } else {
        fail("model.merges", "each merge must be \"left right\" or [left, right], found " + describe(merge.json()));
      }
      Id a = token_id(left), b = token_id(right), merged = token_id(left + right);
      if (a < 0 || b < 0 || merged < 0) fail("model.merges", fmt::format("merge {} uses tokens missing from the vocab", describe(merge.json())));
      merges_.emplace(pair_key(a, b), std::make_pair(rank++, merged));
    }
  }

  void add_token(const std::string& token, Id id) {
    vocab_[token] = id;
    if (static_cast<std::size_t>(id) >= id_to_token_.size()) id_to_token_.resize(id + 1, nullptr);
    id_to_token_[id] = &vocab_.find(token)->first;
  }

  void read_normalizer(const JsonValue& n) {
    if (n.is_null()) return;
    std::string type = n.expect_object().get_or<std::string>("type", "");
    if (type == "Sequence") {
      for (const JsonValue& child : n.optional("normalizers").elements()) read_normalizer(child);
    } else if (type == "NFC") {
      normalizers_.push_back({Normalizer::Kind::nfc, "", ""});
    } else if (type == "Prepend") {
      normalizers_.push_back({Normalizer::Kind::prepend, n["prepend"].get<std::string>(), ""});
    } else if (type == "Replace") {
      if (!n.has("pattern") || !n["pattern"].has("String"))
        fail("normalizer.Replace", "only String patterns are supported, found " + describe(n.optional("pattern").json()));
      normalizers_.push_back({Normalizer::Kind::replace, n["pattern"]["String"].get<std::string>(), n["content"].get<std::string>()});
    } else {
      fail("normalizer", fmt::format("type \"{}\" is not supported (NFC, Prepend, Replace, Sequence)", type));
    }
  }

  void read_pre_tokenizer(const JsonValue& p) {
    if (p.is_null()) return;  // SentencePiece-style files: the normalized text is one piece
    std::string type = p.expect_object().get_or<std::string>("type", "");
    if (type == "Sequence") {
      for (const JsonValue& child : p.optional("pretokenizers").elements()) read_pre_tokenizer(child);
    } else if (type == "Split") {
      const std::string behavior = p.get_or<std::string>("behavior", "");
      if (behavior != "Isolated") fail("pre_tokenizer.Split", fmt::format("behavior \"{}\" is not supported (Isolated)", behavior));
      if (p.get_or("invert", false)) fail("pre_tokenizer.Split", "invert is not supported");
      if (!p.has("pattern") || !p["pattern"].has("Regex"))
        fail("pre_tokenizer.Split", "only Regex patterns are supported, found " + describe(p.optional("pattern").json()));
      const std::string regex = p["pattern"]["Regex"].get<std::string>();
      steps_.push_back({Step::Kind::split, std::make_unique<Regex>(regex, file_ + ": pre_tokenizer.Split"), false});
    } else if (type == "ByteLevel") {
      Step step{Step::Kind::byte_level, nullptr, p.get_or("add_prefix_space", false)};
      if (p.get_or("use_regex", true)) step.regex = std::make_unique<Regex>(kGpt2Pattern, file_ + ": pre_tokenizer.ByteLevel");
      steps_.push_back(std::move(step));
    } else if (type == "Metaspace") {
      Step step{Step::Kind::metaspace, nullptr, false, p.get_or<std::string>("replacement", "\u2581"),
                p.get_or<std::string>("prepend_scheme", "always"), p.get_or("split", true)};
      if (step.replacement.empty()) fail("pre_tokenizer.Metaspace", "replacement is empty");
      if (step.prepend_scheme != "always" && step.prepend_scheme != "first" && step.prepend_scheme != "never")
        fail("pre_tokenizer.Metaspace", fmt::format("prepend_scheme \"{}\" is not one of always, first, never", step.prepend_scheme));
      steps_.push_back(std::move(step));
    } else {
      fail("pre_tokenizer", fmt::format("type \"{}\" is not supported (Split, ByteLevel, Metaspace, Sequence)", type));
    }
  }

  void read_decoder(const JsonValue& d) {
    std::string type = d.is_null() ? "" : d.expect_object().get_or<std::string>("type", "");
    if (type == "Sequence") {
      for (const JsonValue& child : d.optional("decoders").elements()) read_decoder(child);
    } else if (type == "ByteLevel") {
      decoders_.push_back({Decoder::Kind::byte_level});
    } else if (type == "ByteFallback") {
      decoders_.push_back({Decoder::Kind::byte_fallback});
    } else if (type == "Fuse") {
      decoders_.push_back({Decoder::Kind::fuse});
    } else if (type == "Metaspace") {  // replacement -> space; the first token loses its replacements unless prepend_scheme is never
      decoders_.push_back({Decoder::Kind::metaspace, d.get_or<std::string>("replacement", "\u2581"),
                           d.get_or<std::string>("prepend_scheme", "always") == "never" ? "keep" : ""});
    } else if (type == "Replace") {
      if (!d.has("pattern") || !d["pattern"].has("String"))
        fail("decoder.Replace", "only String patterns are supported, found " + describe(d.optional("pattern").json()));
      decoders_.push_back({Decoder::Kind::replace, d["pattern"]["String"].get<std::string>(), d["content"].get<std::string>()});
    } else if (type == "Strip") {
      const int start = d.get_or("start", 0), stop = d.get_or("stop", 0);
      if (start < 0 || stop < 0) fail("decoder.Strip", fmt::format("start {} and stop {} must not be negative", start, stop));
      decoders_.push_back({Decoder::Kind::strip, d["content"].get<std::string>(), "", start, stop});
    } else {
      fail("decoder", fmt::format("type \"{}\" is not supported (ByteLevel, Replace, ByteFallback, Fuse, Strip, Metaspace, Sequence)", type));
    }
  }

  void read_added_tokens(const JsonValue& tokens) {
    for (const JsonValue& t : tokens.elements()) {
      const std::string content = t.expect_object()["content"].get<std::string>();
      for (const char* flag : {"lstrip", "rstrip", "single_word"})
        if (t.get_or(flag, false)) fail("added_tokens", fmt::format("\"{}\" sets {}, which is not supported", content, flag));
      if (t.get_or("normalized", false) && !normalizers_.empty())
        fail("added_tokens", fmt::format("\"{}\" is normalized, with a normalizer: not supported", content));
      AddedToken token{content, checked_token_id(t["id"].json(), [&] { return t["id"]; }), t.get_or("special", false)};
      if (token.content.empty()) fail("added_tokens", "an added token is empty");
      add_token(token.content, token.id);
      if (token.special) special_ids_[token.id] = true;
      added_by_first_byte_[static_cast<unsigned char>(token.content[0])].push_back(std::move(token));
    }
    for (auto& [byte, list] : added_by_first_byte_)
      std::stable_sort(list.begin(), list.end(), [](const auto& a, const auto& b) { return a.content.size() > b.content.size(); });
  }

  const AddedToken* match_added(std::string_view text, std::size_t i) const {
    auto it = added_by_first_byte_.find(static_cast<unsigned char>(text[i]));
    if (it == added_by_first_byte_.end()) return nullptr;
    for (const auto& token : it->second)  // longest first
      if (text.compare(i, token.content.size(), token.content) == 0) return &token;
    return nullptr;
  }

  void encode_plain(std::string_view text, std::vector<Id>& ids, bool at_start) const {
    if (text.empty()) return;
    std::string normalized(text);
    for (const auto& n : normalizers_) {
      if (n.kind == Normalizer::Kind::nfc) normalized = unicode::nfc(normalized);
      else if (n.kind == Normalizer::Kind::prepend) normalized = normalized.empty() ? normalized : n.text + normalized;
      else normalized = replace_all(normalized, n.text, n.content);
    }
    std::vector<std::string> pieces = {normalized};
    for (const auto& step : steps_) pieces = apply(step, pieces, at_start);
    for (const auto& piece : pieces) bpe(piece, ids);
  }

  static std::vector<std::string> apply(const Step& step, const std::vector<std::string>& pieces, bool at_start) {
    if (step.kind == Step::Kind::metaspace) return metaspace(step, pieces, at_start);
    std::vector<std::string> out;
    for (const auto& piece_in : pieces) {
      std::string piece = piece_in;
      if (step.kind == Step::Kind::byte_level && step.add_prefix_space && !piece.empty() && piece[0] != ' ') piece = " " + piece;
      std::vector<std::string> parts;
      if (step.regex) {
        std::size_t last = 0;
        step.regex->for_each_match(piece, [&](std::size_t begin, std::size_t end) {
          if (begin > last) parts.push_back(piece.substr(last, begin - last));
          parts.push_back(piece.substr(begin, end - begin));
          last = end;
        });
        if (last < piece.size()) parts.push_back(piece.substr(last));
      } else {
        parts.push_back(piece);
      }
      for (auto& part : parts) {
        if (step.kind == Step::Kind::byte_level) {
          std::string mapped;
          for (unsigned char b : part) mapped += unicode::byte_to_char()[b];
          part = std::move(mapped);
        }
        out.push_back(std::move(part));
      }
    }
    return out;
  }

  static std::vector<std::string> apply(const Decoder& d, std::vector<std::string> tokens) {
    switch (d.kind) {
      case Decoder::Kind::byte_level: {  // every character stands for a byte; a token with other characters keeps its bytes
        std::string bytes;
        for (const auto& token : tokens) {
          std::string mapped;
          bool all_bytes = true;
          for (std::size_t i = 0; i < token.size() && all_bytes;) {
            int b = unicode::char_to_byte(unicode::next_code_point(token, i));
            if (b < 0) all_bytes = false;
            else mapped += static_cast<char>(b);
          }
          bytes += all_bytes ? mapped : token;
        }
        return {unicode::utf8_lossy(bytes)};
      }
      case Decoder::Kind::replace:
        for (auto& t : tokens) t = replace_all(t, d.text, d.content);
        return tokens;
      case Decoder::Kind::byte_fallback: {  // runs of <0xAB> tokens become their UTF-8 text, or one U+FFFD per byte
        std::vector<std::string> out;
        std::string bytes;
        std::size_t count = 0;
        auto flush = [&] {
          if (count == 0) return;
          if (unicode::utf8_lossy(bytes) == bytes) out.push_back(bytes);
          else for (std::size_t i = 0; i < count; ++i) out.push_back("\xEF\xBF\xBD");
          bytes.clear();
          count = 0;
        };
        for (auto& t : tokens) {
          int b = byte_token(t);
          if (b >= 0) {
            bytes += static_cast<char>(b);
            ++count;
          } else {
            flush();
            out.push_back(std::move(t));
          }
        }
        flush();
        return out;
      }
      case Decoder::Kind::metaspace:
        for (std::size_t i = 0; i < tokens.size(); ++i)
          tokens[i] = replace_all(tokens[i], d.text, i == 0 && d.content != "keep" ? "" : " ");
        return tokens;
      case Decoder::Kind::fuse: {
        std::string joined;
        for (const auto& t : tokens) joined += t;
        return {joined};
      }
      case Decoder::Kind::strip:
        for (auto& t : tokens) {
          for (int i = 0; i < d.start && t.compare(0, d.text.size(), d.text) == 0 && !d.text.empty(); ++i) t.erase(0, d.text.size());
          for (int i = 0; i < d.stop && t.size() >= d.text.size() && !d.text.empty() &&
                          t.compare(t.size() - d.text.size(), d.text.size(), d.text) == 0; ++i)
            t.erase(t.size() - d.text.size());
        }
        return tokens;
    }
    return tokens;
  }

  static std::vector<std::string> metaspace(const Step& step, const std::vector<std::string>& pieces, bool at_start) {
    std::vector<std::string> out;
    for (std::size_t p = 0; p < pieces.size(); ++p) {
      std::string piece = replace_all(pieces[p], " ", step.replacement);
      bool prepend = step.prepend_scheme == "always" || (step.prepend_scheme == "first" && at_start && p == 0);
      if (prepend && piece.compare(0, step.replacement.size(), step.replacement) != 0) piece = step.replacement + piece;
      if (!step.split) {
        out.push_back(std::move(piece));
        continue;
      }
      std::string current;
      for (std::size_t i = 0; i < piece.size();) {
        if (piece.compare(i, step.replacement.size(), step.replacement) == 0) {
          if (!current.empty()) out.push_back(std::move(current));
          current = step.replacement;
          i += step.replacement.size();
        } else {
          current += piece[i++];
        }
      }
      if (!current.empty()) out.push_back(std::move(current));
    }
    return out;
  }

  static std::uint64_t pair_key(Id a, Id b) { return (static_cast<std::uint64_t>(a) << 32) | static_cast<std::uint64_t>(b); }

  // Initial symbols of a word: its characters, or their UTF-8 bytes as <0xAB> tokens (byte_fallback),
  // or the unknown token (consecutive ones fused with fuse_unk).
  std::vector<Id> initial_symbols(const std::string& word) const {
    std::vector<Id> symbols;
    for (auto ch : unicode::characters(word)) {
      Id id = token_id(ch);
      if (id < 0 && byte_fallback_) {
        std::vector<Id> bytes;
        for (unsigned char b : ch) bytes.push_back(token_id(fmt::format("<0x{:02X}>", b)));
        if (std::find(bytes.begin(), bytes.end(), Id{-1}) == bytes.end()) {
          symbols.insert(symbols.end(), bytes.begin(), bytes.end());
          continue;
        }
      }
      if (id < 0) {
        if (unk_ < 0) throw std::runtime_error(fmt::format("{}: model: character \"{}\" has no token (and no byte fallback)", file_, std::string(ch)));
        if (fuse_unk_ && !symbols.empty() && symbols.back() == unk_) continue;
        id = unk_;
      }
      symbols.push_back(id);
    }
    return symbols;
  }

  // Byte-pair merges by rank, lowest first and leftmost among equals (a heap over a linked list, so long
  // pieces of pre-tokenizer-free files stay O(n log n)), with a cache of short words.
  void bpe(const std::string& word, std::vector<Id>& ids) const {
    if (word.empty()) return;
    const bool cacheable = word.size() <= 256;
    if (cacheable) {
      std::lock_guard lock(cache_mutex_);
      if (auto it = cache_.find(word); it != cache_.end()) {
        ids.insert(ids.end(), it->second.begin(), it->second.end());
        return;
      }
    }
    std::vector<Id> symbols;
    if (Id whole = ignore_merges_ ? token_id(word) : -1; whole >= 0) {
      symbols.push_back(whole);
    } else {
      symbols = merge(initial_symbols(word));
    }
    ids.insert(ids.end(), symbols.begin(), symbols.end());
    if (!cacheable) return;
    std::lock_guard lock(cache_mutex_);
    if (cache_.size() < 200000) cache_.emplace(word, std::move(symbols));
  }

  std::vector<Id> merge(std::vector<Id> sym) const {
    const std::size_t n = sym.size();
    std::vector<std::ptrdiff_t> prev(n), next(n);
    for (std::size_t i = 0; i < n; ++i) {
      prev[i] = static_cast<std::ptrdiff_t>(i) - 1;
      next[i] = i + 1 < n ? static_cast<std::ptrdiff_t>(i + 1) : -1;
    }
    struct Candidate {
      Id rank;
      std::size_t at;
      Id left, right, merged;
      bool operator>(const Candidate& o) const { return rank != o.rank ? rank > o.rank : at > o.at; }
    };
    std::priority_queue<Candidate, std::vector<Candidate>, std::greater<Candidate>> heap;
    auto push = [&](std::ptrdiff_t i) {
      if (i < 0 || next[i] < 0) return;
      auto it = merges_.find(pair_key(sym[i], sym[next[i]]));
      if (it != merges_.end()) heap.push({it->second.first, static_cast<std::size_t>(i), sym[i], sym[next[i]], it->second.second});
    };
    for (std::size_t i = 0; i + 1 < n; ++i) push(static_cast<std::ptrdiff_t>(i));
    std::vector<bool> alive(n, true);
    while (!heap.empty()) {
      Candidate c = heap.top();
      heap.pop();
      const auto i = static_cast<std::ptrdiff_t>(c.at);
      if (!alive[i] || sym[i] != c.left || next[i] < 0 || sym[next[i]] != c.right) continue;  // stale
      const std::ptrdiff_t j = next[i];
      sym[i] = c.merged;
      alive[j] = false;
      next[i] = next[j];
      if (next[j] >= 0) prev[next[j]] = i;
      push(prev[i]);
      push(i);
    }
    std::vector<Id> out;
    for (std::size_t i = 0; i < n; ++i)
      if (alive[i]) out.push_back(sym[i]);
    return out;
  }

  std::string file_;
  std::unordered_map<std::string, Id> vocab_;
  std::vector<const std::string*> id_to_token_;
  std::unordered_map<std::uint64_t, std::pair<Id, Id>> merges_;  // (left, right) -> (rank, merged)
  bool ignore_merges_ = false, byte_fallback_ = false, fuse_unk_ = false;
  Id unk_ = -1;
  std::vector<Normalizer> normalizers_;
  std::vector<Decoder> decoders_;
  std::vector<Step> steps_;
  std::map<unsigned char, std::vector<AddedToken>> added_by_first_byte_;
  std::unordered_map<Id, bool> special_ids_;
  mutable std::mutex cache_mutex_;
  mutable std::unordered_map<std::string, std::vector<Id>> cache_;
};

}  // namespace

std::unique_ptr<Tokenizer> Tokenizer::from_file(const std::filesystem::path& tokenizer_json) {
  const json j = read_json_file(tokenizer_json);
  const JsonValue root(j, tokenizer_json.string());
  const bool wordpiece = j.is_object() && j.contains("model") && j["model"].is_object() && j["model"].value("type", json()) == "WordPiece";
  std::unique_ptr<Tokenizer> tokenizer = wordpiece ? make_wordpiece_tokenizer(root) : std::make_unique<BpeTokenizer>(root);
  SpecialTokens special = read_post_processor(root.optional("post_processor"));
  tokenizer->special_prefix_ = std::move(special.prefix);
  tokenizer->special_suffix_ = std::move(special.suffix);
  tokenizer->special_description_ = std::move(special.description);
  return tokenizer;
}

}  // namespace moelab
