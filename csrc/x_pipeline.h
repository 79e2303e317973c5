// The x-tile pipeline's schedule: how many shared-memory stages the x tiles rotate through,
// how far ahead a CTA fetches, and how many of a thread's cp.async groups may still be in
// flight when a step's tile must have landed.  Host and device (CtaSteps, cta_steps.cuh,
// runs it; the checks below prove it at compile time for every stage count in use).
//
// With kStages stages, step s's x tile lives in stage s % kStages and the producer fetches
// x(s + kAhead), kAhead = kStages - 1, during step s, into the stage step s - 1 read (done:
// every thread passed the barrier at the top of step s after finishing step s - 1).  A
// thread commits one cp.async group per step slot, in step order, empty for the slots past
// the last step, so at the top of step s it has committed the groups of slots 0 .. s +
// kAhead - 1, and x(s) has landed once at most the kAhead - 1 newer ones are in flight
// (cp.async.wait_group, an immediate: the same count every step, no branch).  The double
// buffer waits for all its groups, so it commits only slots it fetched.
//
// Two stages (kAhead = 1) is the double buffer the kernels had: wait for everything.  More
// stages keep more of x in flight per thread: the wgmma kernel, issue-light, waited for
// x with one step of lead (bench/NOTES.md, run 7's "Stall Long Scoreboard").
#pragma once

#include <cstdint>

#include "philox.cuh"  // FASTJL_HD
#include "schedule_checks.h"

namespace fastjl {
namespace proj {

template <int kStages>
struct XPipeline {
  static_assert(kStages >= 2 && (kStages & (kStages - 1)) == 0,
                "a power of two: the stage is a mask of the step, not a 64-bit division");
  static constexpr int kAhead = kStages - 1;  // x(s + kAhead) is fetched during step s
  // Groups that may be in flight at a step's wait: those of the kAhead - 1 later slots.
  static constexpr int kNewerInFlight = kAhead - 1;

  static constexpr FASTJL_HD int stage(int64_t step) {
    return static_cast<int>(step & (kStages - 1));
  }
};

// ---- the schedule, checked by enumeration at compile time ------------------------------
// One thread's life through `steps` steps, as CtaSteps runs it: the prologue's slots
// 0 .. kAhead - 1 (fetch x(t) if t < steps, commit), then per step s: wait with
// kNewerInFlight groups allowed in flight, barrier, read stage(s), slot s + kAhead (fetch
// if < steps, commit; the double buffer commits only what it fetched).  Checks that
//  * x(s) is complete when step s reads it (groups complete in commit order, so waiting
//    with n in flight completes all but the newest n);
//  * no fetch writes a stage that holds a tile not yet read (the one step s reads included);
//  * every step's tile is fetched exactly once, in step order, before its step.
template <int kStages>
constexpr bool x_schedule_holds(int64_t steps) {
  using Pipe = XPipeline<kStages>;
  int64_t holder[kStages] = {};  // step whose tile a stage holds, -1: none
  for (int i = 0; i < kStages; ++i) holder[i] = -1;
  int64_t fetched = 0;  // x(0) .. x(fetched - 1) fetched
  int64_t group_of[64] = {};  // the group each step's copies were committed in
  int64_t groups = 0;         // groups committed
  auto slot = [&](int64_t t, int64_t reading) -> bool {
    if (t < steps) {
      if (t != fetched || t >= 64) return false;  // once, in step order
      const int st = Pipe::stage(t);
      if (holder[st] >= reading) return false;  // still to be read
      holder[st] = t;
      group_of[t] = groups;
      ++fetched;
    }
    if (t < steps || Pipe::kAhead > 1) ++groups;  // commit (CtaSteps::fetch_slot)
    return true;
  };
  for (int64_t t = 0; t < Pipe::kAhead; ++t)
    if (!slot(t, 0)) return false;
  for (int64_t s = 0; s < steps; ++s) {
    const int64_t complete = groups - Pipe::kNewerInFlight;  // groups 0 .. complete - 1
    if (s >= fetched || group_of[s] >= complete) return false;  // x(s) may be in flight
    if (holder[Pipe::stage(s)] != s) return false;             // overwritten
    if (!slot(s + Pipe::kAhead, s)) return false;              // after the barrier of step s
  }
  return fetched == steps;
}

static_assert(holds_for_step_counts(16, [](int64_t n) { return x_schedule_holds<2>(n); }),
              "double-buffered x schedule");
static_assert(holds_for_step_counts(16, [](int64_t n) { return x_schedule_holds<4>(n); }),
              "four-stage x schedule");

}  // namespace proj
}  // namespace fastjl
