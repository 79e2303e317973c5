// One helper of the compile-time schedule checks (x_pipeline.h, words_pipeline.h): a CTA's
// schedule is enumerated for a given number of steps, and must hold for every count a test
// can reach (short splits, fewer steps than the pipelines' lead, several turns of the rings).
#pragma once

#include <cstdint>

namespace fastjl {
namespace proj {

// check(n) for every step count n = 1 .. max_steps.
template <class Check>
constexpr bool holds_for_step_counts(int64_t max_steps, Check check) {
  for (int64_t n = 1; n <= max_steps; ++n)
    if (!check(n)) return false;
  return true;
}

}  // namespace proj
}  // namespace fastjl
