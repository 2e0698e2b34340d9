// Finished stages of other run folders that a run takes instead of computing them again: a stage folder
// whose .done marker carries the same stage key (stage_keys.h) holds exactly what this run's stage would
// write. Sources are the newest earlier run (--resume with a changed config) or the other points of a
// sweep (sweep.h). With a lock folder, a stage is computed under a lock per stage key, so that two
// processes that need the same stage never both compute it: the second waits, then reuses.
#pragma once

#include <filesystem>
#include <memory>
#include <optional>
#include <string>
#include <vector>

namespace moelab {

// The key a finished stage was run with ("" for a stage finished before keys were recorded); nullopt
// when the folder has no .done marker (not finished).
std::optional<std::string> done_key(const std::filesystem::path& stage_dir);

// Copies a finished stage's folder over `to`, as hard links where the file system allows (nothing is
// written twice), through a partial folder renamed into place.
void copy_stage(const std::filesystem::path& from, const std::filesystem::path& to);

class StageCache {
 public:
  struct Hit {
    std::filesystem::path stage_dir;  // <run>/<stage>
    std::string label;                // the source run as the log names it
  };

  // Finished stages of `run_dir` may be reused; `label` names it in the log ("point 1 (k=3)"; "": its path).
  void add_run(const std::filesystem::path& run_dir, const std::string& label);
  // Stages are computed under a lock per key in `dir` (created when needed).
  void set_lock_dir(const std::filesystem::path& dir) { lock_dir_ = dir; }
  bool empty() const { return sources_.empty(); }

  // A finished folder of stage `id` whose key is `hash`, from the first source that has one.
  std::optional<Hit> find(const std::string& id, const std::string& hash) const;

  // Held while this process computes the stage with key `hash` (nullptr without a lock folder); blocks
  // while another process holds it, saying so once in the log as `stage` (e.g. "stage 1/3 [collect]").
  class Lock;
  std::unique_ptr<Lock> lock(const std::string& hash, const std::string& stage) const;

 private:
  std::vector<std::pair<std::filesystem::path, std::string>> sources_;
  std::filesystem::path lock_dir_;
};

class StageCache::Lock {
 public:
  explicit Lock(int fd) : fd_(fd) {}
  ~Lock();
  Lock(const Lock&) = delete;
  Lock& operator=(const Lock&) = delete;

 private:
  int fd_;
};

}  // namespace moelab
