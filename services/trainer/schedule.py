"""Which samples each optimizer step trains on, under the run's curriculum schedule, and how
that step prompts them (zoom mode, question suffix).

``Schedule.batch(step)`` is a pure function of the config's seed, the step and the current
scores: no iterator state, so a run resumed from a checkpoint draws exactly what it would
have drawn (a rescored run must restore its latest scores with ``update_scores``).

How a batch is drawn:

- Every draw reads a *stream*: a pool of samples (one level, one stage's levels, or the whole
  dataset) in a seeded shuffle, reshuffled each pass. Position ``p`` of the stream is pass
  ``p // len(pool)``, so within a pass nothing repeats.
- ``none`` reads one stream of the whole dataset at position ``step * prompts_per_step + i``
  (stages still set the zoom mode and suffix). ``staged`` reads a stream of the stage's
  levels (``RunConfig.stage_plan``) from the stage's first step on.
- ``mixed`` and ``rescored`` choose each slot's level from the step's level weights (``mix``,
  or with linear pacing ``(1 - a)·easy + a·mix``, ``a = step / (steps - 1)``) with a seeded
  golden-ratio sequence: low discrepancy, so even a 40-sample run gets close to its mix. The
  slot then reads its level's stream at the count of earlier slots of that level, recomputed
  from step 0 each call (vectorised; cheap next to a training step).
- A level (or a whole stage) with no samples falls back to the nearest level that has some
  (ties to the easier one), and the batch says so with ``fallback``.

Unlike Mags-RL, which orders one fixed 40-sample set easy to hard, the stages here are step
ranges, and ``rescored`` re-derives levels from the policy's own pass rate during the run.
"""

from __future__ import annotations

import math
import random
from collections.abc import Sequence
from contextlib import closing
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from magsrl.data.curriculum import LEVELS, CurriculumEntry, read_curriculum
from magsrl.data.loaders import load_dataset
from magsrl.data.sample import Sample, read_jsonl
from magsrl.proto.judge import Level
from magsrl.proto.prompts import render_prompt
from magsrl.trainer.run_config import RunConfig, Stage, StageZoom

__all__ = ["Schedule", "StepBatch", "load_run_samples"]

# RunConfig Stage.prompt_suffix -> the prompt file appended to the question.
SUFFIX_PROMPTS: dict[str, str] = {"stage1": "stage1_suffix"}
# Weyl sequence step: the golden ratio's fractional part spreads points most evenly.
_GOLDEN = (math.sqrt(5.0) - 1.0) / 2.0
_SCORED_SCHEDULES = frozenset({"staged", "mixed", "rescored"})
_MIXED_SCHEDULES = frozenset({"mixed", "rescored"})
_ALL = "all"  # the stream name of the unlevelled pool
_MAX_CACHED_ORDERS = 64
# dataset_kind for a curriculum file (auto also detects one by these keys in its first row).
CURRICULUM_KIND = "curriculum"
_CURRICULUM_KEYS = frozenset({"zoom_score", "level"})


@dataclass(frozen=True)
class StepBatch:
    """The prompts of one optimizer step and how to pose them.

    ``levels``: the levels the step asked for (empty under schedule none: any sample);
    ``sample_levels``: each drawn sample's level (None when unscored); ``level_weights``: the
    mixed schedules' normalised weights at this step (else None); ``fallback``: some level
    asked for had no samples and the nearest one was drawn instead."""

    step: int
    samples: list[Sample]
    stage_index: int
    zoom: StageZoom  # RolloutJob.zoom
    question_suffix: str | None
    levels: tuple[Level, ...]
    sample_levels: tuple[Level | None, ...]
    level_weights: dict[Level, float] | None
    fallback: bool


def load_run_samples(config: RunConfig) -> list[Sample | CurriculumEntry]:
    """The run's samples: a curriculum file (``magsrl curriculum``) as scored entries, any
    other dataset through its loader (unscored), the first ``max_samples`` of either. The
    generic JSONL loader would read a curriculum file too, but drop its scores."""
    path = Path(config.dataset)
    kind = config.dataset_kind
    if kind == CURRICULUM_KIND or (kind == "auto" and _is_curriculum(path)):
        return list(read_curriculum(path)[: config.max_samples])
    return list(load_dataset(path, kind, limit=config.max_samples))


def _is_curriculum(path: Path) -> bool:
    if path.suffix.lower() != ".jsonl" or not path.is_file():
        return False
    with closing(read_jsonl(path)) as rows:
        row = next(rows, None)
    return row is not None and row.keys() >= _CURRICULUM_KEYS


def _seed_key(*parts: object) -> str:
    # random.Random seeds a str through SHA-512: stable across processes and PYTHONHASHSEED.
    return ":".join(map(str, parts))


def _nearest(wanted: Sequence[Level], available: set[Level]) -> Level:
    """The available level closest to any wanted one (ties: the easier), e.g. medium for an
    empty hard, easy for an empty medium when easy and hard both have samples."""

    def distance(level: Level) -> tuple[int, int]:
        index = LEVELS.index(level)
        return min(abs(index - LEVELS.index(w)) for w in wanted), index

    return min(available, key=distance)


def _plain_sample(sample: Sample) -> Sample:
    return Sample.model_validate(sample.model_dump(include=set(Sample.model_fields)))


class Schedule:
    """Deterministic batches for a run: ``batch(step)`` for ``0 <= step < config.steps``."""

    def __init__(self, config: RunConfig, samples: Sequence[Sample | CurriculumEntry]) -> None:
        if not samples:
            raise ValueError(f"dataset {config.dataset}: no samples to train on")
        self.config = config
        self.schedule = config.curriculum.schedule
        self.batch_size = config.grpo.prompts_per_step
        self.plan = config.stage_plan()
        unscored = sum(not isinstance(s, CurriculumEntry) for s in samples)
        if self.schedule in _SCORED_SCHEDULES and unscored:
            raise ValueError(
                f"curriculum.schedule={self.schedule!r} draws samples by difficulty level, but "
                f"{unscored} of {len(samples)} samples in {config.dataset} have no judge score: "
                "score the dataset with `magsrl curriculum DATASET --judge heuristic` and point "
                "`dataset` at the curriculum file it writes, or set curriculum.schedule: none"
            )
        # Plain Samples (not CurriculumEntry) go into jobs: scores are the trainer's business.
        self._plain = [s if type(s) is Sample else _plain_sample(s) for s in samples]
        self._ids = {s.id: i for i, s in enumerate(samples)}
        if len(self._ids) != len(samples):
            raise ValueError(f"dataset {config.dataset}: sample ids are not unique")
        self._levels: list[Level | None] = [
            s.level if isinstance(s, CurriculumEntry) else None for s in samples
        ]
        self._rebuild_pools()

    # ---- scores --------------------------------------------------------------------
    def _rebuild_pools(self) -> None:
        self._pools: dict[Level, list[int]] = {lv: [] for lv in LEVELS}
        for index, level in enumerate(self._levels):
            if level is not None:
                self._pools[level].append(index)
        self._available = {lv for lv, pool in self._pools.items() if pool}
        # Shuffled passes by (stream, pass): a cache only (batches never depend on it), and
        # stale once the pools change.
        self._orders: dict[tuple[str, int], list[int]] = {}

    def update_scores(self, entries: Sequence[CurriculumEntry]) -> None:
        """Replaces the levels of the samples these entries name (by id); others keep theirs.
        The trainer calls it after re-scoring (``needs_rescore``) and on resume."""
        unknown = [e.id for e in entries if e.id not in self._ids]
        if unknown:
            raise ValueError(f"update_scores: ids not in the dataset: {unknown[:5]}")
        for entry in entries:
            self._levels[self._ids[entry.id]] = entry.level
        self._rebuild_pools()

    def needs_rescore(self, step: int) -> bool:
        """True when the trainer should re-score with ``pass_rate`` before ``batch(step)``: every
        ``rescore_every`` steps of a rescored run (never at step 0: the file has scores)."""
        every = self.config.curriculum.rescore_every
        return self.schedule == "rescored" and every is not None and step > 0 and step % every == 0

    def levels_by_id(self) -> dict[str, Level | None]:
        """The current level of every sample, for checkpoints and logs."""
        return {sample.id: self._levels[i] for i, sample in enumerate(self._plain)}

    def restore_levels(self, levels: dict[str, Level | None]) -> None:
        """Puts back ``levels_by_id()`` from a checkpoint, so a resumed re-scored run draws
        what the interrupted one would have."""
        for sample_id, level in levels.items():
            if sample_id in self._ids:
                self._levels[self._ids[sample_id]] = level
        self._rebuild_pools()

    @property
    def samples(self) -> list[Sample]:
        """Every sample of the run, without scores (what re-scoring sends to the judge)."""
        return list(self._plain)

    # ---- batches -------------------------------------------------------------------
    def stage_at(self, step: int) -> tuple[int, Stage, int]:
        """The stage index, the stage and its first step, for ``step``."""
        for index, plan in enumerate(self.plan):
            if plan.start <= step < plan.end:
                return index, plan.stage, plan.start
        raise ValueError(f"step {step} is outside the run's steps [0, {self.config.steps})")

    def batch(self, step: int) -> StepBatch:
        """The ``prompts_per_step`` samples of ``step``, with the stage's prompt settings."""
        stage_index, stage, start = self.stage_at(step)
        weights: dict[Level, float] | None = None
        if self.schedule in _MIXED_SCHEDULES:
            weights = self.level_weights(step)
            indices, fallback = self._mixed(step)
            levels = tuple(lv for lv in LEVELS if weights[lv] > 0)
        else:
            levels = tuple(stage.levels or LEVELS) if self.schedule == "staged" else ()
            # Staged: each stage has its own pool, read from its first step; none: one
            # stream over the whole run, so a new stage does not restart the data order.
            position = step - start if levels else step
            indices, fallback = self._stream_batch(position, stage_index, levels)
        suffix = stage.prompt_suffix
        return StepBatch(
            step=step,
            samples=[self._plain[i] for i in indices],
            stage_index=stage_index,
            zoom=stage.zoom,
            question_suffix=render_prompt(SUFFIX_PROMPTS[suffix]) if suffix else None,
            levels=levels,
            sample_levels=tuple(self._levels[i] for i in indices),
            level_weights=weights,
            fallback=fallback,
        )

    def level_weights(self, step: int) -> dict[Level, float]:
        """The mixed schedules' level weights at ``step``, normalised to sum 1."""
        mix = self.config.curriculum.mix
        total = sum(mix.get(lv, 0.0) for lv in LEVELS)
        target = {lv: mix.get(lv, 0.0) / total for lv in LEVELS}
        if self.config.curriculum.pacing == "constant":
            return target
        last = self.config.steps - 1
        ramp = step / last if last > 0 else 1.0  # a one-step run is at its end already
        easy_only = {lv: float(lv == "easy") for lv in LEVELS}
        return {lv: (1 - ramp) * easy_only[lv] + ramp * target[lv] for lv in LEVELS}

    # ---- streams -------------------------------------------------------------------
    def _stream(self, name: str, pool: list[int], position: int) -> int:
        """The sample at ``position`` of a pool's stream: pass ``position // len(pool)`` is
        its own seeded shuffle, so each pass visits every sample once."""
        epoch, offset = divmod(position, len(pool))
        key = (name, epoch)
        order = self._orders.get(key)
        if order is None:
            if len(self._orders) >= _MAX_CACHED_ORDERS:
                self._orders.clear()
            order = self._pass_order(name, pool, epoch)
            self._orders[key] = order
        return order[offset]

    def _shuffled(self, name: str, pool: list[int], epoch: int) -> list[int]:
        order = list(pool)
        random.Random(_seed_key(self.config.seed, name, epoch)).shuffle(order)
        return order

    def _pass_order(self, name: str, pool: list[int], epoch: int) -> list[int]:
        """Pass ``epoch``'s order. A batch may straddle two passes, so the samples that end
        the previous pass are kept out of this pass's first ``prompts_per_step - 1`` places:
        no batch repeats a sample when the pool holds at least 3 batches' worth (below that,
        the previous pass's own head can reach into its tail; repeats are then possible)."""
        order = self._shuffled(name, pool, epoch)
        window = self.batch_size - 1
        if epoch == 0 or window == 0:
            return order
        tail = set(self._shuffled(name, pool, epoch - 1)[-window:])
        head = [i for i in order if i not in tail][:window]
        chosen = set(head)
        return head + [i for i in order if i not in chosen]

    def _stream_batch(
        self, offset_step: int, stage_index: int, levels: tuple[Level, ...]
    ) -> tuple[list[int], bool]:
        """``staged``: one stream per stage's levels; ``none``: one stream over the run."""
        fallback = False
        if not levels:
            pool = list(range(len(self._plain)))
        else:
            pool = sorted(i for lv in levels for i in self._pools[lv])
            if not pool:
                pool, fallback = self._pools[_nearest(levels, self._available)], True
        # The stage index is in the stream name, so each stage starts a fresh shuffle.
        name = _seed_key("stage", stage_index, *levels) if levels else _ALL
        first = offset_step * self.batch_size
        return [self._stream(name, pool, first + i) for i in range(self.batch_size)], fallback

    def _slot_levels(self, step: int) -> np.ndarray:
        """The level index (into LEVELS) chosen for every slot of steps 0..step, (J,)."""
        n = (step + 1) * self.batch_size
        slots = np.arange(n, dtype=np.float64)
        steps = np.arange(step + 1)
        weights = np.array([[self.level_weights(int(k))[lv] for lv in LEVELS] for k in steps])
        cum = np.cumsum(weights, axis=1)  # (S, 3)
        # The last level with weight takes everything up to 1, so rounding (cum ending at
        # 0.999...) can never send a point to a level with weight 0.
        last_positive = (weights > 0).cumsum(axis=1).argmax(axis=1)  # (S,)
        cols = np.arange(len(LEVELS))
        cum[cols[None, :] >= last_positive[:, None]] = np.inf
        offset = random.Random(_seed_key(self.config.seed, "weyl")).random()
        points = np.mod(offset + slots * _GOLDEN, 1.0)  # (J,)
        per_slot = cum[(slots // self.batch_size).astype(int)]  # (J, 3)
        return (points[:, None] < per_slot).argmax(axis=1)

    def _mixed(self, step: int) -> tuple[list[int], bool]:
        """``mixed``/``rescored``: per-slot levels, each read from its (resolved) level stream."""
        if not self._available:
            raise ValueError("no scored samples left to draw from")
        resolve = [LEVELS.index(_nearest([lv], self._available)) for lv in LEVELS]
        chosen = self._slot_levels(step)
        resolved = np.asarray(resolve)[chosen]
        first = step * self.batch_size
        seen = np.bincount(resolved[:first], minlength=len(LEVELS)).tolist()
        indices: list[int] = []
        for level_index in resolved[first:].tolist():
            level = LEVELS[level_index]
            indices.append(self._stream(level, self._pools[level], seen[level_index]))
            seen[level_index] += 1
        fallback = bool((chosen[first:] != resolved[first:]).any())
        return indices, fallback
