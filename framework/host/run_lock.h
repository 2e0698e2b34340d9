// An advisory lock on a run folder (flock on <run>/.lock, held while the run lives): a second runexp
// resuming the same folder fails at once instead of writing into it alongside the first. The kernel
// drops the lock when the holder exits, however it exits, so a crashed run never leaves it stale.
#pragma once

#include <filesystem>

namespace moelab {

class RunLock {
 public:
  // Throws, naming the folder and the holder's pid, when another process holds the lock.
  explicit RunLock(const std::filesystem::path& run_dir);
  ~RunLock();
  RunLock(const RunLock&) = delete;
  RunLock& operator=(const RunLock&) = delete;

 private:
  int fd_ = -1;
};

}  // namespace moelab
