#include "moelab/lib/json_read.h"

#include "moelab/lib/files.h"

#include <fmt/format.h>

#include <cctype>

namespace moelab {

namespace {

// 1-based line and column of byte `at`.
std::pair<std::size_t, std::size_t> line_and_column(std::string_view text, std::size_t at) {
  std::size_t line = 1, column = 1;
  for (std::size_t i = 0; i < at && i < text.size(); ++i) {
    if (text[i] == '\n') {
      ++line;
      column = 1;
    } else {
      ++column;
    }
  }
  return {line, column};
}

// Brackets outside strings, counted before nlohmann builds (and later copies and destroys) the tree.
void check_depth(std::string_view text, const std::string& origin, int max_depth) {
  int depth = 0;
  bool in_string = false, escaped = false;
  for (std::size_t i = 0; i < text.size(); ++i) {
    const char c = text[i];
    if (in_string) {
      if (escaped) escaped = false;
      else if (c == '\\') escaped = true;
      else if (c == '"') in_string = false;
    } else if (c == '"') {
      in_string = true;
    } else if (c == '[' || c == '{') {
      if (++depth > max_depth) {
        auto [line, column] = line_and_column(text, i);
        throw std::runtime_error(fmt::format("{}: not valid JSON: nesting deeper than {} levels at line {}, column {}", origin,
                                             max_depth, line, column));
      }
    } else if (c == ']' || c == '}') {
      --depth;
    }
  }
}

bool is_identifier(const std::string& key) {
  if (key.empty() || std::isdigit(static_cast<unsigned char>(key[0]))) return false;
  for (unsigned char c : key)
    if (!std::isalnum(c) && c != '_') return false;
  return true;
}

}  // namespace

nlohmann::json parse_json(std::string_view text, const std::string& origin, int max_depth) {
  check_depth(text, origin, max_depth);
  try {
    return nlohmann::json::parse(text.begin(), text.end());
  } catch (const nlohmann::json::exception& e) {  // parse_error (with line and column) or out_of_range (1e400)
    // nlohmann's text after its "[json.exception.<kind>.N] " tag.
    std::string what = e.what();
    if (auto tag = what.find("] "); what.rfind("[json.exception.", 0) == 0 && tag != std::string::npos) what = what.substr(tag + 2);
    throw std::runtime_error(fmt::format("{}: not valid JSON: {}", origin, what));
  }
}

nlohmann::json read_json_file(const std::filesystem::path& file, int max_depth) {
  return parse_json(read_file(file), file.string(), max_depth);
}

std::runtime_error JsonValue::error(const std::string& what) const {
  return std::runtime_error(path_.empty() ? fmt::format("{}: {}", origin_, what) : fmt::format("{}: {}: {}", origin_, path_, what));
}

std::string JsonValue::describe(const nlohmann::json& value) {
  std::string text = value.dump();
  if (text.size() > 80) text = text.substr(0, 77) + "...";
  return fmt::format("{} {}", value.type_name(), text);
}

void JsonValue::wrong(const char* expected) const { throw error(fmt::format("expected {}, found {}", expected, describe(*j_))); }

const JsonValue& JsonValue::expect_object() const {
  if (!j_->is_object()) wrong("an object");
  return *this;
}

const JsonValue& JsonValue::expect_list() const {
  if (!j_->is_array()) wrong("a list");
  return *this;
}

JsonValue JsonValue::operator[](const std::string& key) const {
  expect_object();
  if (!j_->contains(key)) throw error(fmt::format("missing \"{}\"", key));
  if (!is_identifier(key)) return entry(key);
  return JsonValue((*j_)[key], origin_, path_.empty() ? key : path_ + "." + key);
}

JsonValue JsonValue::entry(const std::string& key) const {
  expect_object();
  if (!j_->contains(key)) throw error(fmt::format("missing \"{}\"", key));
  return JsonValue((*j_)[key], origin_, path_ + "[" + nlohmann::json(key).dump() + "]");
}

JsonValue JsonValue::operator[](std::size_t index) const {
  expect_list();
  if (index >= j_->size()) throw error(fmt::format("has {} elements, index {} is missing", j_->size(), index));
  return JsonValue((*j_)[index], origin_, fmt::format("{}[{}]", path_, index));
}

JsonValue JsonValue::optional(const std::string& key) const {
  static const nlohmann::json null;
  if (has(key)) return (*this)[key];
  return JsonValue(null, origin_, path_.empty() ? key : path_ + "." + key);
}

std::vector<JsonValue> JsonValue::elements() const {
  std::vector<JsonValue> out;
  if (is_null()) return out;
  expect_list();
  out.reserve(j_->size());
  for (std::size_t i = 0; i < j_->size(); ++i) out.push_back((*this)[i]);
  return out;
}

}  // namespace moelab
