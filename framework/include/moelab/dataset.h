// A dataset: an indexed list of examples read from the user's files.
#pragma once

#include "moelab/plugin.h"

#include <nlohmann/json.hpp>

#include <string>
#include <vector>

namespace moelab {

struct Example {
  std::string id;
  std::string text;                  // question, prompt or raw text
  std::vector<std::string> choices;  // answer options of a multiple-choice item
  std::vector<std::string> letters;  // their labels ("A", "B", ...)
  long long answer = -1;             // index of the gold option, -1 if none
  nlohmann::json record;             // the source record, for fields the common ones do not cover
  std::string origin;                // "file:line" for error messages
};

class Dataset : public Plugin {
 public:
  static constexpr Kind kKind = Kind::dataset;
  ~Dataset() override;
  virtual std::size_t size() const = 0;
  virtual const Example& at(std::size_t index) const = 0;
};

}  // namespace moelab
