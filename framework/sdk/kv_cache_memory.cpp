#include "moelab/lib/kv_cache_memory.h"

#include <fmt/format.h>
#include <torch/torch.h>

#include <fstream>
#include <sstream>
#include <stdexcept>

namespace moelab {

namespace {

constexpr double kGiB = 1024.0 * 1024.0 * 1024.0;

// MemAvailable of /proc/meminfo in bytes; -1 when it cannot be read.
int64_t available_host_bytes() {
  std::ifstream meminfo("/proc/meminfo");
  for (std::string line; std::getline(meminfo, line);) {
    if (line.rfind("MemAvailable:", 0) != 0) continue;
    std::istringstream fields(line.substr(13));
    int64_t kib = -1;
    fields >> kib;
    return kib < 0 ? -1 : kib * 1024;
  }
  return -1;
}

}  // namespace

int64_t require_kv_cache_fits(const Model& model, int64_t rows, int64_t positions, const std::string& keys) {
  const int64_t per_position = model.kv_cache_bytes_per_position();
  if (per_position <= 0 || rows <= 0 || positions <= 0) return 0;
  const double needed = static_cast<double>(rows) * static_cast<double>(positions) * static_cast<double>(per_position);
  const std::string what = fmt::format("the KV cache needs {:.2f} GiB ({} rows x {} positions x {} B per position; {})", needed / kGiB, rows,
                                       positions, per_position, keys);
  if (needed > 9.0e18) throw std::runtime_error(what + ": more than any device has; lower them");
  const auto bytes = static_cast<int64_t>(needed);
  const torch::Device device = model.device();
  if (device.is_cpu()) {
    const int64_t available = available_host_bytes();
    if (available >= 0 && bytes > available)
      throw std::runtime_error(fmt::format("{}, but this machine has {:.2f} GiB available (MemAvailable); lower them", what,
                                           static_cast<double>(available) / kGiB));
    return bytes;
  }
  try {
    torch::Tensor probe = torch::empty({bytes}, torch::dtype(torch::kUInt8).device(device));
  } catch (const c10::Error& e) {
    const std::string reason = e.what_without_backtrace();
    throw std::runtime_error(fmt::format("{}, but {} cannot hold it besides the model ({}); lower them", what, device.str(),
                                         reason.substr(0, reason.find('\n'))));
  }
  return bytes;
}

}  // namespace moelab
