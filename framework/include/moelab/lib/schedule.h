// Linear warmup of a training coefficient (the learning rate, RoMA's lambda):
//   value(t) = peak * min(1, (t + 1) / warmup_steps),  t = optimizer step from 0;
// warmup_steps <= 1 gives the peak from the first step.
#pragma once

#include <algorithm>

namespace moelab {

class LinearWarmup {
 public:
  LinearWarmup(double peak, long long warmup_steps) : peak_(peak), warmup_steps_(std::max<long long>(warmup_steps, 1)) {}
  double at(long long step) const { return peak_ * std::min(1.0, static_cast<double>(step + 1) / static_cast<double>(warmup_steps_)); }

 private:
  double peak_;
  long long warmup_steps_;
};

}  // namespace moelab
