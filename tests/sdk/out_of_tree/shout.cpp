// An out-of-tree stage: writes its message in capitals, `times` times, to shout.txt.
#include <moelab/moelab.h>
#include <moelab/lib/files.h>

#include <cctype>

namespace {

struct Settings {
  std::string message;
  long long times;
};

const moelab::Options<Settings>& options() {
  static const auto o = moelab::Options<Settings>("shout", moelab::Kind::stage, "1.0.0", "writes a message in capitals")
                            .string("message", &Settings::message, moelab::required, "what to shout")
                            .integer("times", &Settings::times, 1, "how many lines").at_least(1);
  return o;
}

class Shout final : public moelab::Stage {
 public:
  Shout(const moelab::Config& config, moelab::RunContext&) : settings_(options().read(config)) {}

  void run(const std::filesystem::path& out_dir, nlohmann::json& summary) override {
    std::string loud;
    for (char c : settings_.message) loud += static_cast<char>(std::toupper(static_cast<unsigned char>(c)));
    std::string text;
    for (long long i = 0; i < settings_.times; ++i) text += loud + "\n";
    moelab::write_file_atomic(out_dir / "shout.txt", text);
    summary["shouted"] = loud;
  }

 private:
  Settings settings_;
};

}  // namespace

MOELAB_PLUGIN(options, Shout)
