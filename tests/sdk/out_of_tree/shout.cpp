// An out-of-tree stage: writes its message in capitals, `times` times, to shout.txt.
#include <moelab/moelab.h>

#include <cctype>

namespace {

class Shout final : public moelab::Stage {
 public:
  Shout(const moelab::Config& config, moelab::RunContext&) : message_(config.get_string("message")), times_(config.get_int("times")) {}

  void run(const std::filesystem::path& out_dir, nlohmann::json& summary) override {
    std::string loud;
    for (char c : message_) loud += static_cast<char>(std::toupper(static_cast<unsigned char>(c)));
    std::string text;
    for (long long i = 0; i < times_; ++i) text += loud + "\n";
    moelab::write_file_atomic(out_dir / "shout.txt", text);
    summary["shouted"] = loud;
  }

 private:
  std::string message_;
  long long times_;
};

moelab::Descriptor describe() {
  return moelab::Descriptor("shout", moelab::Kind::stage, "1.0.0", "writes a message in capitals")
      .required("message", moelab::KeyType::string, "what to shout")
      .integer("times", 1, "how many lines");
}

}  // namespace

MOELAB_PLUGIN(describe, Shout)
