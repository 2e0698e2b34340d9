// The one table of supported model types. Adding an architecture: its file, its builder's
// declaration and a row here.
#include "architecture.h"

namespace moelab {

namespace architectures {
Architecture olmoe();
Architecture mixtral();
Architecture qwen2_moe();
Architecture qwen3_moe();
Architecture deepseek_v2();
Architecture deepseek_v3();
}  // namespace architectures

namespace {

struct Entry {
  const char* model_type;
  Architecture (*build)();
};

const Entry kRegistry[] = {
    {"olmoe", architectures::olmoe},
    {"mixtral", architectures::mixtral},
    {"qwen2_moe", architectures::qwen2_moe},
    {"qwen3_moe", architectures::qwen3_moe},
    {"deepseek_v2", architectures::deepseek_v2},
    {"deepseek_v3", architectures::deepseek_v3},
    {"kimi_k2", architectures::deepseek_v3},  // Kimi-K2 ships the DeepSeek-V3 layout under its own model_type
};

}  // namespace

std::vector<std::string> supported_model_types() {
  std::vector<std::string> names;
  for (const Entry& e : kRegistry) names.push_back(e.model_type);
  return names;
}

Architecture find_architecture(const std::string& model_type, const std::string& file) {
  for (const Entry& e : kRegistry) {
    if (model_type != e.model_type) continue;
    Architecture a = e.build();
    a.model_type = model_type;
    return a;
  }
  throw std::runtime_error(
      fmt::format("{}: model_type \"{}\" is not supported; supported: {}", file, model_type, fmt::join(supported_model_types(), ", ")));
}

}  // namespace moelab
