#include "post_processor.h"

#include <fmt/format.h>

#include <stdexcept>

namespace moelab {

namespace {

using nlohmann::json;

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
Named token_pair(const json& p, const char* key, const std::string& file, const std::string& component) {
  if (!p.contains(key) || !p[key].is_array() || p[key].size() != 2 || !p[key][0].is_string() || !p[key][1].is_number_integer())
    fail(file, component, fmt::format("\"{}\" must be [token, id], found {}", key, p.value(key, json()).dump()));
  return {{p[key][0].get<std::string>()}, {p[key][1].get<std::int64_t>()}};
}

// TemplateProcessing's single template: special tokens before and after sequence A.
Template single_template(const json& p, const std::string& file) {
  const std::string component = "post_processor.TemplateProcessing";
  if (!p.contains("single") || !p["single"].is_array())
    fail(file, component, "\"single\" must be a list of SpecialToken and Sequence pieces, found " + p.value("single", json()).dump());
  const json& specials = p.value("special_tokens", json::object());
  Template t;
  bool seen_sequence = false;
  for (const auto& piece : p["single"]) {
    if (piece.contains("Sequence")) {
      const std::string id = piece["Sequence"].value("id", "");
      if (id != "A" || seen_sequence)
        fail(file, component + ".single", fmt::format("a single text's template must hold sequence A once, found {}", p["single"].dump()));
      seen_sequence = true;
    } else if (piece.contains("SpecialToken")) {
      const std::string name = piece["SpecialToken"].value("id", "");
      if (!specials.contains(name))
        fail(file, component + ".single", fmt::format("special token \"{}\" is not in special_tokens", name));
      const json& s = specials[name];
      if (!s.contains("ids") || !s["ids"].is_array() || !s.contains("tokens") || !s["tokens"].is_array() || s["ids"].size() != s["tokens"].size())
        fail(file, component + ".special_tokens", fmt::format("\"{}\" needs lists \"ids\" and \"tokens\" of one length, found {}", name, s.dump()));
      append(seen_sequence ? t.after : t.before, {s["tokens"].get<std::vector<std::string>>(), s["ids"].get<std::vector<std::int64_t>>()});
    } else {
      fail(file, component + ".single", "each piece is a SpecialToken or a Sequence, found " + piece.dump());
    }
  }
  if (!seen_sequence) fail(file, component + ".single", "the template has no sequence A: " + p["single"].dump());
  return t;
}

// Each processor of a Sequence wraps what the ones before it produced.
void read(const json& p, const std::string& file, Template& out) {
  if (p.is_null()) return;
  const std::string type = p.value("type", "");
  Template t;
  if (type == "Sequence") {
    for (const auto& child : p.value("processors", json::array())) read(child, file, out);
    return;
  } else if (type == "ByteLevel") {
    return;  // offsets only
  } else if (type == "TemplateProcessing") {
    t = single_template(p, file);
  } else if (type == "BertProcessing" || type == "RobertaProcessing") {
    t.before = token_pair(p, "cls", file, "post_processor." + type);
    t.after = token_pair(p, "sep", file, "post_processor." + type);
  } else {
    fail(file, "post_processor",
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

SpecialTokens read_post_processor(const json& post_processor, const std::string& file) {
  Template t;
  read(post_processor, file, t);
  std::string description;
  if (!t.before.ids.empty()) description = listed(t.before) + " prepended";
  if (!t.after.ids.empty()) description += (description.empty() ? "" : " and ") + listed(t.after) + " appended";
  return {t.before.ids, t.after.ids, description.empty() ? "nothing added" : description};
}

}  // namespace moelab
