// What moelab's benchmark programs share: reading their flags and waiting for the device.
#pragma once

#include <torch/torch.h>

#include <stdexcept>
#include <string>

namespace moelab::bench {

// The flags after argv[first], each read once: next() gives the flag, integer()/text() its value.
class CommandLine {
 public:
  CommandLine(int argc, char** argv, int first) : argc_(argc), argv_(argv), i_(first - 1) {}
  bool next(std::string& flag) {
    if (++i_ >= argc_) return false;
    flag_ = flag = argv_[i_];
    return true;
  }
  std::string text() {
    if (i_ + 1 >= argc_) throw std::runtime_error(flag_ + " needs a value");
    return argv_[++i_];
  }
  long long integer() { return std::stoll(text()); }

 private:
  int argc_;
  char** argv_;
  int i_;
  std::string flag_;
};

// Waits for the device's queued work (CUDA); nothing on the CPU.
inline void synchronize(const torch::Device& device) {
  if (device.is_cuda()) torch::cuda::synchronize(device.index() < 0 ? 0 : device.index());
}

}  // namespace moelab::bench
