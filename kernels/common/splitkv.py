"""Split-KV planning shared by every kernel family: FlashDecoding's split count and the key
blocks of one split. Pure Python (no torch, no Triton)."""
from __future__ import annotations

import math

# Softmax runs in base 2: scores are pre-multiplied by log2(e), partial LSEs are base-2.
LOG2E = 1.4426950408889634


def flash_split_heuristic(work_ctas: int, slots: int, n_blocks: int, max_splits: int = 128) -> int:
    """FlashDecoding's split count: none when the work already fills most of a wave; otherwise the
    smallest split count whose wave efficiency is within 85% of the best."""
    if work_ctas <= 0 or n_blocks <= 1 or work_ctas >= 0.8 * slots:
        return 1
    max_splits = max(1, min(max_splits, slots, n_blocks))

    def eff(s):
        waves = work_ctas * s / slots
        return waves / math.ceil(waves)

    def distinct(s):  # a split count that does not change blocks per split is no new option
        return s == 1 or math.ceil(n_blocks / s) != math.ceil(n_blocks / (s - 1))

    best = max(eff(s) for s in range(1, max_splits + 1) if distinct(s))
    return next(s for s in range(1, max_splits + 1) if distinct(s) and eff(s) >= 0.85 * best)


def split_candidates(n_blocks: int, chosen: int, most: int = 8, min_blocks: int = 4) -> list[int]:
    """Split counts worth timing for a launch over ``n_blocks`` key blocks: ``chosen`` (the
    heuristic's), no split, and 2..``most`` splits that leave every split at least ``min_blocks``
    blocks and change the blocks per split. Which of them runs fastest depends on
    how the device schedules CTAs and shares its memory bandwidth, which no wave count predicts (on
    the H200 an unsplit decode whose last wave held ~40 CTAs ran at full bandwidth and one whose
    last wave held 50-160 up to 17% below it): the caller times them on the GPU at hand."""
    if n_blocks <= 1:
        return [max(1, chosen)]
    out = {1, max(1, chosen)}
    for s in range(2, most + 1):
        per = -(-n_blocks // s)
        if per >= min_blocks and per != -(-n_blocks // (s - 1)):
            out.add(s)
    return sorted(out)


def kv_split_range(n_blocks: int, n_splits: int, split: int) -> tuple[int, int]:
    """Key blocks [lo, hi) of one split, as the kernels compute them: ceil(n_blocks / n_splits)
    blocks per split, the last splits shorter or empty (hi >= lo always)."""
    per = -(-n_blocks // n_splits)
    lo = split * per
    return lo, max(lo, min(lo + per, n_blocks))


__all__ = ["LOG2E", "flash_split_heuristic", "kv_split_range", "split_candidates"]
