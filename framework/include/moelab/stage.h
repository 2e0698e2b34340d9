// A stage is one step of an experiment (collect, finetune, evaluate...). Stages run in the order the
// experiment lists them, share the run folder, and each writes into its own folder.
#pragma once

#include "moelab/plugin.h"

#include <nlohmann/json.hpp>

#include <filesystem>

namespace moelab {

class Stage : public Plugin {
 public:
  static constexpr Kind kKind = Kind::stage;
  ~Stage() override;
  // out_dir exists and is empty on a fresh run; `summary` becomes this stage's entry in summary.json.
  virtual void run(const std::filesystem::path& out_dir, nlohmann::json& summary) = 0;
};

}  // namespace moelab
