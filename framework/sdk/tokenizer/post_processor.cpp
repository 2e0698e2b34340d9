#include "post_processor.h"

#include "token_id.h"

#include <fmt/format.h>

#include <stdexcept>

namespace moelab {

namespace {

struct Named {
  std::vector<std::string> tokens;
  std::vector<std::int64_t> ids;
};

// The tokens around the text, with their names for the description.
struct Template {
  Named before, after;
};

[[noreturn]] void fail(const std::string& file, const std::string& component, const std::string& what) {
  throw std::runtime_error(fmt::format("{}: {}: {}", file, component, what));
}

void append(Named& to, const Named& from) {
  to.tokens.insert(to.tokens.end(), from.tokens.begin(), from.tokens.end());
  to.ids.insert(to.ids.end(), from.ids.begin(), from.ids.end());
}

// Bert/RobertaProcessing's "cls" or "sep": ["[CLS]", 101].
Named token_pair(const JsonValue& p, const char* key, const std::string& component) {
  const JsonValue pair = p.optional(key);
  const nlohmann::json& j = pair.json();
  if (!j.is_array() || j.size() != 2 || !j[0].is_string() || !j[1].is_number_integer())
    fail(p.origin(), component, fmt::format("\"{}\" must be [token, id], found {}", key, j.dump()));
  return {{pair[0].get<std::string>()}, {checked_token_id(j[1], [&] { return pair[1]; })}};
}

// TemplateProcessing's single template: special tokens before and after sequence A.
Template single_template(const JsonValue& p) {
  const std::string& file = p.origin();
  const std::string component = "post_processor.TemplateProcessing";
  if (!p.has("single") || !p["single"].json().is_array())
    fail(file, component, "\"single\" must be a list of SpecialToken and Sequence pieces, found " + p.optional("single").json().dump());
  const JsonValue specials = p.optional("special_tokens");
  Template t;
  bool seen_sequence = false;
  for (const JsonValue& piece : p["single"].elements()) {
    if (piece.has("Sequence")) {
      const std::string id = piece["Sequence"].get_or<std::string>("id", "");
      if (id != "A" || seen_sequence)
        fail(file, component + ".single", fmt::format("a single text's template must hold sequence A once, found {}", p["single"].json().dump()));
      seen_sequence = true;
    } else if (piece.has("SpecialToken")) {
      const std::string name = piece["SpecialToken"].get_or<std::string>("id", "");
      if (!specials.has(name)) fail(file, component + ".single", fmt::format("special token \"{}\" is not in special_tokens", name));
      const JsonValue s = specials.entry(name);
      if (!s.has("ids") || !s.has("tokens") || !s["ids"].json().is_array() || !s["tokens"].json().is_array() || s["ids"].size() != s["tokens"].size())
        fail(file, component + ".special_tokens", fmt::format("\"{}\" needs lists \"ids\" and \"tokens\" of one length, found {}", name, s.json().dump()));
      Named named{s["tokens"].get<std::vector<std::string>>(), {}};
      for (const JsonValue& id : s["ids"].elements()) named.ids.push_back(checked_token_id(id.json(), [&] { return id; }));
      append(seen_sequence ? t.after : t.before, named);
    } else {
      fail(file, component + ".single", "each piece is a SpecialToken or a Sequence, found " + piece.json().dump());
    }
  }
  if (!seen_sequence) fail(file, component + ".single", "the template has no sequence A: " + p["single"].json().dump());
  return t;
}

// Each processor of a Sequence wraps what the ones before it produced.
void read(const JsonValue& p, Template& out) {
  if (p.is_null()) return;
  const std::string type = p.expect_object().get_or<std::string>("type", "");
  Template t;
  if (type == "Sequence") {
    for (const JsonValue& child : p.optional("processors").elements()) read(child, out);
    return;
  } else if (type == "ByteLevel") {
    return;  // offsets only
  } else if (type == "TemplateProcessing") {
    t = single_template(p);
  } else if (type == "BertProcessing" || type == "RobertaProcessing") {
    t.before = token_pair(p, "cls", "post_processor." + type);
    t.after = token_pair(p, "sep", "post_processor." + type);
  } else {
    fail(p.origin(), "post_processor",
         fmt::format("type \"{}\" is not supported (TemplateProcessing, BertProcessing, RobertaProcessing, ByteLevel, Sequence)", type));
  }
  append(t.before, out.before);
  append(out.after, t.after);
  out.before = std::move(t.before);
}

std::string listed(const Named& n) {
  std::string s;
  for (std::size_t i = 0; i < n.ids.size(); ++i) s += fmt::format("{}{} (id {})", i ? ", " : "", n.tokens[i], n.ids[i]);
  return s;
}

}  // namespace

SpecialTokens read_post_processor(const JsonValue& post_processor) {
  Template t;
  read(post_processor, t);
  std::string description;
  if (!t.before.ids.empty()) description = listed(t.before) + " prepended";
  if (!t.after.ids.empty()) description += (description.empty() ? "" : " and ") + listed(t.after) + " appended";
  return {t.before.ids, t.after.ids, description.empty() ? "nothing added" : description};
}

}  // namespace moelab
