// The rademacher words' schedule: which warp computes the Philox words of which step, and
// which shared-memory slot holds them.  Host and device (CtaSteps, cta_steps.cuh, runs it;
// the check below proves it at compile time for every batch size).
//
// A step's words are the 32 Philox calls of its 32 rows of P (128 signs each,
// project_tiles.cuh), one call per lane of one warp.  generate_p(t) reads them after the barrier
// of step t - 1 (after the prologue's barrier for t = 0), so they are computed during step
// t - kLead or earlier.  Every step ends at a barrier, so a step lasts as long as its slowest warp:
// with one warp per step computing words (kBatch = 1) that warp ran 25-55% more instructions
// than the other seven every step (bench/NOTES.md, stop 28).  A warp issues a Philox call's
// whole instruction sequence whether 32 lanes or 4 run it, so the work cannot be shared out
// within a step; it is batched across steps instead: every kBatch-th step, kBatch warps each
// compute one step's words (steps s + kLead .. s + kLead + kBatch - 1), and the warps take
// turns by batch.  With kBatch = kWarps every warp computes words once every 8 steps, in the
// same step, so the slowest warp's mean step equals the mean warp's.
//
// Slots: words(t) lives in slot t % kSlots.  At step s the slots of words(s + 1) (read by
// generate_p(s + 1)) and of the kBatch steps being computed are in use: kBatch + 1 slots, so
// 2 kBatch (a power of two: a mask of the step) from kBatch = 2 on, 2 for kBatch = 1.
#pragma once

#include <cstdint>

#include "philox.cuh"  // FASTJL_HD
#include "schedule_checks.h"

namespace fastjl {
namespace proj {

template <int kBatch, int kWarpsPerCta = 8>
struct WordsPipeline {
  static_assert(kBatch >= 1 && kBatch <= kWarpsPerCta && (kBatch & (kBatch - 1)) == 0 &&
                    kWarpsPerCta % kBatch == 0,
                "a power of two that divides the warps: the tests are masks and shifts");
  static constexpr int kLead = 2;  // the prologue computes words(0) and words(1)
  static constexpr int kSlots = kBatch == 1 ? 2 : 2 * kBatch;
  static constexpr int kTurns = kWarpsPerCta / kBatch;  // batches before a warp's turn is back

  static constexpr FASTJL_HD int slot(int step) { return step & (kSlots - 1); }

  // Whether `warp` computes words during step s (after its barrier), and whose: target(s, warp).
  // Unsigned, so that the divisions by powers of two are shifts.
  static constexpr FASTJL_HD bool computes(int step, int warp) {
    const unsigned s = static_cast<unsigned>(step);
    return (s & (kBatch - 1)) == 0u &&
           static_cast<unsigned>(warp) / kBatch == (s / kBatch) % kTurns;
  }
  static constexpr FASTJL_HD int target(int step, int warp) {
    return step + kLead + (warp & (kBatch - 1));
  }
};

// The kernels' batch: every warp, every 8th step (1 is the former schedule, one warp per
// step).  KernelWords is the one schedule CtaSteps runs, the emulation mirrors and both
// shared-memory layouts (SmemLayout, Sm90SmemLayout) size their words slots by.
constexpr int kWordsBatch = 8;
using KernelWords = WordsPipeline<kWordsBatch>;  // the kernels' schedule and slots

// ---- the schedule, checked by enumeration at compile time ------------------------------
// Epochs are the stretches between barriers: the prologue's words are written in epoch -2
// and words(0) is read in epoch -1 (after the prologue's barrier); step s is epoch s, where
// the threads read words(s + 1) (generate_p(s + 1), if s + 1 < steps) and the warps that
// compute() write their targets (if < steps).  Checks, for a CTA of `steps` steps, that
//  * every step's words are written exactly once, in an epoch before the one that reads them;
//  * a slot is rewritten only in an epoch after the one that read what it held (and is never
//    written twice in one epoch), so no words are lost before they are read;
//  * words(t) is still in its slot when read.
template <int kBatch, int kWarpsPerCta = 8>
constexpr bool words_schedule_holds(int64_t step_count) {
  const int steps = static_cast<int>(step_count);
  using Words = WordsPipeline<kBatch, kWarpsPerCta>;
  constexpr int kMax = 64;
  if (steps > kMax) return false;
  int holder[Words::kSlots] = {};       // step whose words a slot holds, -1: none
  int freed_in[Words::kSlots] = {};     // epoch in which its words were read (free after it)
  int written_in[Words::kSlots] = {};   // epoch of its last write
  int writes[kMax] = {};                // times each step's words were written
  for (int i = 0; i < Words::kSlots; ++i) holder[i] = -1, freed_in[i] = -3, written_in[i] = -3;
  auto write = [&](int t, int epoch) -> bool {
    const int sl = Words::slot(t);
    if (freed_in[sl] >= epoch || written_in[sl] == epoch) return false;  // unread or raced
    if (holder[sl] >= 0 && freed_in[sl] < written_in[sl]) return false;  // never read
    holder[sl] = t, written_in[sl] = epoch, ++writes[t];
    return true;
  };
  auto read = [&](int t, int epoch) -> bool {
    const int sl = Words::slot(t);
    if (holder[sl] != t || written_in[sl] >= epoch) return false;  // gone, or not yet published
    freed_in[sl] = epoch;
    return true;
  };
  // Prologue (CtaSteps::prologue): warps 0 and 1 write words(0) and words(1).
  for (int t = 0; t < Words::kLead && t < steps; ++t)
    if (!write(t, -2)) return false;
  if (!read(0, -1)) return false;
  for (int s = 0; s < steps; ++s) {
    // CtaSteps::produce_next(s): computing warps write, then every thread reads words(s + 1)
    // (a warp's own write and the reads of another slot in one epoch: write() refuses a slot
    // whose words are read in this epoch).
    if (s + 1 < steps) {
      for (int w = 0; w < kWarpsPerCta; ++w)
        if (Words::computes(s, w) && Words::target(s, w) < steps &&
            !write(Words::target(s, w), s))
          return false;
      if (!read(s + 1, s)) return false;
    }
  }
  for (int t = 0; t < steps; ++t)
    if (writes[t] != 1) return false;
  return true;
}

// 40 steps: five turns of the largest ring (16 slots) and its batches.
static_assert(holds_for_step_counts(40, [](int64_t n) { return words_schedule_holds<1>(n); }),
              "one warp per step");
static_assert(holds_for_step_counts(40, [](int64_t n) { return words_schedule_holds<2>(n); }),
              "batches of 2");
static_assert(holds_for_step_counts(40, [](int64_t n) { return words_schedule_holds<4>(n); }),
              "batches of 4");
static_assert(holds_for_step_counts(40, [](int64_t n) { return words_schedule_holds<8>(n); }),
              "every warp every 8th step");

}  // namespace proj
}  // namespace fastjl
