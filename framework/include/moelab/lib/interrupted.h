// Interrupting a long stage without losing its work: SIGINT/SIGTERM (or request_interrupt()) during
// RouterTrainer::train() finish the current step, save a resumable checkpoint in the stage folder and
// throw Interrupted; `runexp ... --resume` continues from that step.
#pragma once

#include <stdexcept>
#include <string>

namespace moelab {

// Thrown by a stage that stopped on request after saving what it needs to continue; the message
// says how to continue. Hosts exit with 128 + SIGINT (130) on it instead of reporting a failure.
class Interrupted : public std::runtime_error {
 public:
  explicit Interrupted(const std::string& message);
  ~Interrupted() override;
};

// Asks the running trainer to stop after its current step (what its signal handler does; tests and
// hosts with their own handlers call it). Safe to call from a signal handler.
void request_interrupt() noexcept;
// Whether a stop was requested and not yet acted on.
bool interrupt_requested() noexcept;

}  // namespace moelab
