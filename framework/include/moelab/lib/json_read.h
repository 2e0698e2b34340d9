// Reading JSON that users hand us (model folders, datasets, stage outputs): nesting deeper than
// kMaxJsonDepth is an error, not a stack overflow; a syntax error names the line and column; typed
// access through JsonValue names the origin (file, or file:line for JSON Lines), the key path
// (model.vocab["abc"], added_tokens[3].id) and what was expected, never a bare nlohmann message.
#pragma once

#include <nlohmann/json.hpp>

#include <cmath>
#include <cstdint>
#include <filesystem>
#include <limits>
#include <stdexcept>
#include <string>
#include <string_view>
#include <type_traits>
#include <vector>

namespace moelab {

// Hugging Face's own reader (serde_json) stops at 128 levels; no real file comes near this.
inline constexpr int kMaxJsonDepth = 512;

// `text` parsed; errors start with `origin` ("tokenizer.json", "data.jsonl:12").
nlohmann::json parse_json(std::string_view text, const std::string& origin, int max_depth = kMaxJsonDepth);
// The file parsed; errors name it.
nlohmann::json read_json_file(const std::filesystem::path& file, int max_depth = kMaxJsonDepth);

// A value inside a parsed document with the way to it, for errors users can act on. Holds a reference:
// the document must outlive it.
class JsonValue {
 public:
  JsonValue(const nlohmann::json& value, std::string origin, std::string path = "")
      : j_(&value), origin_(std::move(origin)), path_(std::move(path)) {}

  const nlohmann::json& json() const { return *j_; }
  const std::string& origin() const { return origin_; }
  const std::string& path() const { return path_; }
  // An error "origin: path: what" (the path left out at the root).
  std::runtime_error error(const std::string& what) const;

  // An object holding `key` with a non-null value.
  bool has(const std::string& key) const { return j_->is_object() && j_->contains(key) && !(*j_)[key].is_null(); }
  // A member (path .key, or ["key"] when it is not an identifier); a non-object or a missing key is an error.
  JsonValue operator[](const std::string& key) const;
  // A member of a map keyed by data (path ["key"] always: vocab entries, expert names).
  JsonValue entry(const std::string& key) const;
  // An element of a list (path [i]); a non-list or an index out of range is an error.
  JsonValue operator[](std::size_t index) const;

  // The value as T, strictly: an integer must be an integer in T's range (3.5 or 1e20 is not an id), a
  // number finite, a string a string, a bool true or false, a std::vector<U> a list of U.
  template <class T>
  T get() const;
  // Member `key` as T, or `fallback` when it is absent or null.
  template <class T>
  T get_or(const std::string& key, T fallback) const {
    return has(key) ? (*this)[key].get<T>() : fallback;
  }
  // Member `key` when present and not null, else a null value at that path (for optional tables).
  JsonValue optional(const std::string& key) const;

  bool is_null() const { return j_->is_null(); }
  // Errors unless the value is an object / a list; returns *this for chaining.
  const JsonValue& expect_object() const;
  const JsonValue& expect_list() const;
  std::size_t size() const { return j_->size(); }
  // The elements of a list (an error for anything else but null, which has none).
  std::vector<JsonValue> elements() const;
  // Calls f(key, value) for each member of an object (an error for anything else but null).
  template <class F>
  void for_each_member(F&& f) const {
    if (is_null()) return;
    expect_object();
    for (const auto& [key, value] : j_->items()) f(key, entry(key));
  }

  // A short description of a value for messages: its kind and its text, cut at 80 characters.
  static std::string describe(const nlohmann::json& value);

 private:
  [[noreturn]] void wrong(const char* expected) const;

  const nlohmann::json* j_;
  std::string origin_, path_;
};

template <class T>
T JsonValue::get() const {
  const nlohmann::json& j = *j_;
  if constexpr (std::is_same_v<T, nlohmann::json>) {
    return j;
  } else if constexpr (std::is_same_v<T, std::string>) {
    if (!j.is_string()) wrong("a string");
    return j.get<std::string>();
  } else if constexpr (std::is_same_v<T, bool>) {
    if (!j.is_boolean()) wrong("true or false");
    return j.get<bool>();
  } else if constexpr (std::is_integral_v<T>) {
    if (!j.is_number_integer()) wrong("an integer");
    if (j.is_number_unsigned()) {
      if (j.get<std::uint64_t>() > static_cast<std::uint64_t>(std::numeric_limits<T>::max())) wrong("an integer in range");
    } else {
      const std::int64_t v = j.get<std::int64_t>();
      if (v < 0 && std::is_unsigned_v<T>) wrong("a non-negative integer");
      if (!std::is_unsigned_v<T> && (v < static_cast<std::int64_t>(std::numeric_limits<T>::min()) ||
                                      v > static_cast<std::int64_t>(std::numeric_limits<T>::max())))
        wrong("an integer in range");
    }
    return j.get<T>();
  } else if constexpr (std::is_floating_point_v<T>) {
    if (!j.is_number() || !std::isfinite(j.get<double>())) wrong("a finite number");
    return j.get<T>();
  } else {
    static_assert(std::is_same_v<T, std::vector<typename T::value_type>>, "JsonValue::get: unsupported type");
    if (!j.is_array()) wrong("a list");
    T out;
    out.reserve(j.size());
    for (std::size_t i = 0; i < j.size(); ++i) out.push_back((*this)[i].template get<typename T::value_type>());
    return out;
  }
}

}  // namespace moelab
