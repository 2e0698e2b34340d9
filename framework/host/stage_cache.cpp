#include "stage_cache.h"

#include "moelab/lib/files.h"
#include "moelab/lib/log.h"

#include <fcntl.h>
#include <fmt/format.h>
#include <sys/file.h>
#include <unistd.h>

#include <cerrno>
#include <cstring>
#include <stdexcept>

namespace moelab {

namespace fs = std::filesystem;

std::optional<std::string> done_key(const fs::path& stage_dir) {
  const fs::path marker = stage_dir / ".done";
  if (!fs::exists(marker)) return std::nullopt;
  const std::string text = read_file(marker);
  const std::size_t at = text.find("key ");
  return at == std::string::npos ? std::string() : text.substr(at + 4, text.find('\n', at) - at - 4);
}

void copy_stage(const fs::path& from, const fs::path& to) {
  // Into a partial folder renamed into place: a copy cut short never looks finished (its .done is inside).
  const fs::path partial = to.string() + ".partial";
  fs::remove_all(partial);
  std::error_code ec;
  fs::copy(from, partial, fs::copy_options::recursive | fs::copy_options::create_hard_links, ec);
  if (ec) {
    fs::remove_all(partial);
    fs::copy(from, partial, fs::copy_options::recursive);
  }
  fs::remove_all(to);
  fs::rename(partial, to);
}

void StageCache::add_run(const fs::path& run_dir, const std::string& label) { sources_.emplace_back(run_dir, label); }

std::optional<StageCache::Hit> StageCache::find(const std::string& id, const std::string& hash) const {
  for (const auto& [run_dir, label] : sources_)
    if (done_key(run_dir / id) == hash) return Hit{run_dir / id, label};
  return std::nullopt;
}

std::unique_ptr<StageCache::Lock> StageCache::lock(const std::string& hash, const std::string& stage) const {
  if (lock_dir_.empty()) return nullptr;
  fs::create_directories(lock_dir_);
  const fs::path file = lock_dir_ / (hash + ".lock");
  const int fd = ::open(file.c_str(), O_RDWR | O_CREAT | O_CLOEXEC, 0644);
  if (fd < 0) throw std::runtime_error(fmt::format("cannot open the stage lock {}: {}", file.string(), std::strerror(errno)));
  auto held = std::make_unique<Lock>(fd);
  if (::flock(fd, LOCK_EX | LOCK_NB) == 0) return held;
  if (errno != EWOULDBLOCK) throw std::runtime_error(fmt::format("cannot lock {}: {}", file.string(), std::strerror(errno)));
  log::info("{}: another process of the sweep is computing this stage (key {}); waiting for it", stage, hash);
  while (::flock(fd, LOCK_EX) != 0)
    if (errno != EINTR) throw std::runtime_error(fmt::format("cannot lock {}: {}", file.string(), std::strerror(errno)));
  return held;
}

StageCache::Lock::~Lock() {
  if (fd_ >= 0) ::close(fd_);
}

}  // namespace moelab
