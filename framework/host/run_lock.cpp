#include "run_lock.h"

#include <fcntl.h>
#include <fmt/format.h>
#include <sys/file.h>
#include <unistd.h>

#include <cerrno>
#include <cstring>
#include <stdexcept>
#include <string>

namespace moelab {

RunLock::RunLock(const std::filesystem::path& run_dir) {
  const std::filesystem::path file = run_dir / ".lock";
  fd_ = ::open(file.c_str(), O_RDWR | O_CREAT | O_CLOEXEC, 0644);
  if (fd_ < 0) throw std::runtime_error(fmt::format("cannot open the run lock {}: {}", file.string(), std::strerror(errno)));
  if (::flock(fd_, LOCK_EX | LOCK_NB) != 0) {
    const int error = errno;
    char holder[32] = {};
    ssize_t n = ::pread(fd_, holder, sizeof holder - 1, 0);
    ::close(fd_);
    fd_ = -1;
    if (error == EWOULDBLOCK)
      throw std::runtime_error(fmt::format("run folder {} is in use by another runexp (pid {}); wait for it to end, or start a new run "
                                           "without --resume", run_dir.string(), n > 0 ? std::string(holder, static_cast<std::size_t>(n)) : "?"));
    throw std::runtime_error(fmt::format("cannot lock the run folder {}: {}", run_dir.string(), std::strerror(error)));
  }
  const std::string pid = std::to_string(::getpid());
  // The pid is only for the message above: the lock holds whether or not it is written.
  if (::ftruncate(fd_, 0) == 0) (void)!::pwrite(fd_, pid.data(), pid.size(), 0);
}

RunLock::~RunLock() {
  if (fd_ >= 0) ::close(fd_);
}

}  // namespace moelab
