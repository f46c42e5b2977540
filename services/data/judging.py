"""Scores samples through the judge service in size-bounded batches: what ``magsrl
curriculum`` and the trainer's pass_rate re-scoring both run."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

from magsrl.clients.judge import JudgeClient
from magsrl.common.images import to_b64
from magsrl.data.curriculum import CurriculumEntry
from magsrl.data.sample import Sample
from magsrl.proto.judge import Method, ScoreRequest

# Batches stay well under the judge's default 32 MB body cap, base64 included.
MAX_BATCH_ITEMS = 16
MAX_BATCH_BYTES = 12 * 1024 * 1024


@dataclass
class JudgedSet:
    entries: list[CurriculumEntry] = field(default_factory=list)
    failures: list[tuple[str, str]] = field(default_factory=list)  # (sample id, why)
    cached: int = 0


def score_request(
    sample: Sample, method: Method, *, cache: bool = True, policy_model: str | None = None
) -> ScoreRequest:
    return ScoreRequest(
        image={"b64": to_b64(Path(sample.image).read_bytes())},
        question=sample.question,
        answer=sample.answer,
        options=sample.options,
        bbox=sample.bbox,
        scorer=sample.scorer,
        method=method,
        cache=cache,
        policy_model=policy_model,
    )


def _batches(samples: Sequence[Sample]) -> list[list[Sample]]:
    batches: list[list[Sample]] = [[]]
    size = 0
    for sample in samples:
        nbytes = Path(sample.image).stat().st_size * 4 // 3
        if batches[-1] and (len(batches[-1]) >= MAX_BATCH_ITEMS or size + nbytes > MAX_BATCH_BYTES):
            batches.append([])
            size = 0
        batches[-1].append(sample)
        size += nbytes
    return [b for b in batches if b]


async def judge_samples(
    samples: Sequence[Sample],
    client: JudgeClient,
    method: Method,
    *,
    cache: bool = True,
    policy_model: str | None = None,
    progress: Callable[[int], None] | None = None,
) -> JudgedSet:
    """Every sample scored (or listed in ``failures`` with the judge's reason)."""
    result = JudgedSet()
    readable: list[Sample] = []
    for sample in samples:
        if "://" in sample.image or not Path(sample.image).is_file():
            result.failures.append((sample.id, f"image not found: {sample.image}"))
        else:
            readable.append(sample)
    for batch in _batches(readable):
        items = [score_request(s, method, cache=cache, policy_model=policy_model) for s in batch]
        response = await client.score_batch(items, method)
        for sample, item in zip(batch, response.results, strict=True):
            if item.score is None:
                why = item.error.message if item.error else "no score"
                result.failures.append((sample.id, why))
                continue
            s = item.score
            result.entries.append(
                CurriculumEntry(
                    **sample.model_dump(),
                    zoom_score=s.zoom_score,
                    level=s.level,
                    raw_score=s.raw_score,
                    judge_method=s.method,
                    factors=s.factors,
                )
            )
        result.cached += response.cached
        if progress:
            progress(len(batch))
    return result
