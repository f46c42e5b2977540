"""Runs an eval: every (sample, arm) pair not yet in ``results.jsonl``, ``concurrency`` at a
time, each result appended as it lands. Arms of one sample are queued together, so a run
stopped early still has paired results to compare."""

from __future__ import annotations

import asyncio
import hashlib
import io
import json
import logging
import time
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

from PIL import Image
from pydantic import ValidationError

from magsrl.common.errors import APIError, validation_message
from magsrl.common.files import atomic_path
from magsrl.common.images import decode_reduced, oriented_size, to_b64, within_pixels
from magsrl.data.sample import Sample
from magsrl.data.scorers import score
from magsrl.eval.backends import Backend, BackendDown, SampleFailed
from magsrl.eval.config import EvalConfig, EvalSettings
from magsrl.eval.results import ResultsFile
from magsrl.proto.eval import RESULTS_FILE, THUMB_DIR, ArmSpec, EvalRecord
from magsrl.proto.policy import AnswerRequest, AnswerResponse

log = logging.getLogger("magsrl.eval")


def record_key(sample_id: str, arm: str) -> str:
    return f"{sample_id}|{arm}"


@dataclass
class ImageInfo:
    data: bytes
    size: tuple[int, int]
    thumb: str | None


# Beside results.jsonl: the wall clock of every run that wrote it, so a resumed report states
# the whole experiment's time, not only the resumed part's.
TIME_FILE = "eval_time.json"
# Records before the ETA is shown: the first few say little about the pace.
ETA_MIN_DONE = 3


@dataclass
class RunSummary:
    done: int = 0  # records written by this run
    skipped: int = 0  # already in the file
    failed: int = 0  # records with an error
    stopped: str | None = None  # why the run stopped early
    elapsed_s: float = 0.0
    # Every run's time together (this one included), and how many runs; None when earlier
    # runs wrote records but left no time (files from before the ledger).
    total_elapsed_s: float | None = None
    runs: int = 1
    records: dict[str, EvalRecord] = field(default_factory=dict)


class Eta:
    """Seconds left at the run's average pace so far. rich's own estimate uses the last 30 s
    of speed, and with arms of very different cost (no-zoom in a second, zoom-sr in tens)
    finishing in bursts it jumped between 4 minutes and 1 h 18 on one run; the whole run's
    average moves only as the pace really changes (arms of a sample run together, so every
    stretch of the run has the same mix)."""

    def __init__(self, total: int, clock: Callable[[], float] = time.monotonic) -> None:
        self.total = total
        self.clock = clock
        self.started = clock()
        self.done = 0

    def advance(self, n: int = 1) -> None:
        self.done += n

    def remaining_s(self) -> float | None:
        elapsed = self.clock() - self.started
        if self.done < ETA_MIN_DONE or elapsed <= 0:
            return None
        return (self.total - self.done) * elapsed / self.done

    def text(self) -> str:
        left = self.remaining_s()
        if left is None:
            return "ETA -"
        minutes, seconds = divmod(round(left), 60)
        hours, minutes = divmod(minutes, 60)
        return (
            f"ETA {hours}:{minutes:02d}:{seconds:02d}" if hours else f"ETA {minutes}:{seconds:02d}"
        )


def add_run_time(out: Path, elapsed_s: float, earlier_records: int) -> tuple[float | None, int]:
    """Adds this run to the folder's time ledger; returns every run's time and the number
    of runs. Earlier records with no ledger (older files) make the total unknown (None)."""
    path = out / TIME_FILE
    total: float | None
    if earlier_records == 0:  # a fresh results file starts a fresh ledger
        path.unlink(missing_ok=True)
    try:
        ledger = json.loads(path.read_text())
        runs = int(ledger["runs"])
        total = None if ledger["elapsed_s"] is None else float(ledger["elapsed_s"])
    except (OSError, ValueError, KeyError, TypeError):
        runs, total = (0, 0.0) if earlier_records == 0 else (1, None)
    total = None if total is None else round(total + elapsed_s, 3)
    runs += 1
    path.write_text(json.dumps({"elapsed_s": total, "runs": runs}) + "\n")
    return total, runs


class ImageCache:
    """Each sample's bytes read once while its arms run, and its thumbnail written once."""

    def __init__(self, out: Path, settings: EvalSettings) -> None:
        self.out = out
        self.settings = settings
        self._images: dict[str, asyncio.Task[ImageInfo]] = {}
        self._users: dict[str, int] = {}

    async def get(self, sample: Sample, users: int) -> ImageInfo:
        if sample.id not in self._images:
            self._images[sample.id] = asyncio.create_task(asyncio.to_thread(self._read, sample))
            self._users[sample.id] = users
        return await self._images[sample.id]

    def release(self, sample: Sample) -> None:
        self._users[sample.id] -= 1
        if self._users[sample.id] == 0:
            del self._images[sample.id], self._users[sample.id]

    def _read(self, sample: Sample) -> ImageInfo:
        if "://" in sample.image:
            import httpx

            data = httpx.get(sample.image, timeout=self.settings.url_timeout_s).content
        else:
            data = Path(sample.image).read_bytes()
        name = hashlib.sha1(sample.id.encode()).hexdigest()[:16] + ".jpg"
        thumb = self.out / THUMB_DIR / name
        # Sizes are upright, as the policy and the magnifier decode (D9): boxes are in this frame.
        if thumb.exists():  # a resumed sample: the header is enough
            with Image.open(io.BytesIO(data)) as probe:
                size = oriented_size(probe)
        else:  # decoded straight to thumbnail size (JPEGs in the DCT)
            image, size = decode_reduced(
                data,
                max_pixels=self.settings.max_image_pixels,
                target=within_pixels(self.settings.thumb_max_pixels),
            )
            with atomic_path(thumb) as partial:
                image.save(partial, "JPEG", quality=self.settings.thumb_quality)
        return ImageInfo(data, size, f"{THUMB_DIR}/{name}")


def make_record(
    sample: Sample,
    arm: ArmSpec,
    dataset: str,
    image: ImageInfo | None,
    response: AnswerResponse | None,
    latency_ms: float,
    error: str | None = None,
) -> EvalRecord:
    """The line for one sample under one arm; an error (or no response) scores as wrong."""
    fields: dict[str, object] = {
        "key": record_key(sample.id, arm.name),
        "sample_id": sample.id,
        "arm": arm.name,
        "dataset": dataset,
        "category": sample.category,
        "question": sample.question,
        "options": sample.options,
        "gold": sample.answer,
        "image": sample.image,
        "image_size": list(image.size) if image else [0, 0],
        "thumb": image.thumb if image else None,
        "latency_ms": round(latency_ms, 3),
        "error": error,
    }
    if response is not None and image is not None:
        served = [z for r in response.rounds for z in r.zooms if z.error is None and z.box]
        area = image.size[0] * image.size[1]
        try:
            correct = score(sample, response.answer)
        except ValueError as exc:  # the dataset's gold answer does not fit its scorer
            correct, fields["error"] = False, f"cannot score: {exc}"
        fields.update(
            answer=response.answer,
            raw_answer=response.raw_answer,
            correct=correct,
            rounds=response.rounds,
            zooms=len(served),
            zoom_errors=sum(1 for r in response.rounds for z in r.zooms if z.error),
            box_fractions=[
                round((z.box[2] - z.box[0]) * (z.box[3] - z.box[1]) / area, 6)  # type: ignore[index]
                for z in served
            ],
            timing_ms=response.timing_ms,
        )
    return EvalRecord.model_validate(fields)


def request_for(
    sample: Sample, arm: ArmSpec, image: ImageInfo, config: EvalConfig
) -> AnswerRequest:
    episode = config.episode.model_dump(exclude_none=True)
    if "max_rounds" not in config.episode.model_fields_set:
        episode.pop("max_rounds")  # unset: the protocol's own turn limit
    episode.update(zoom=arm.zoom, upscale=arm.upscale, seed=config.episode.seed or config.seed)
    return AnswerRequest(
        **episode,
        image={"b64": to_b64(image.data)},  # type: ignore[arg-type]
        question=sample.question,
        options=sample.options,
        model=config.model if config.backend == "policy" else None,
    )


async def run_eval(
    samples: list[Sample],
    config: EvalConfig,
    settings: EvalSettings,
    backend: Backend,
    dataset: str,
    progress: Callable[[EvalRecord], None] | None = None,
    on_start: Callable[[int], None] | None = None,
) -> RunSummary:
    """Answers every missing (sample, arm) pair and appends each record as it lands. Stops
    early, keeping everything written, when the backend is down. ``on_start`` gets the
    number of pairs to run; ``progress`` each new record."""
    started = time.perf_counter()
    results = ResultsFile(config.out / RESULTS_FILE)
    summary = RunSummary(records=results.load())
    earlier = len(summary.records)
    todo = [
        (sample, arm)
        for sample in samples
        for arm in config.arms
        if record_key(sample.id, arm.name) not in summary.records
    ]
    summary.skipped = len(samples) * len(config.arms) - len(todo)
    if on_start is not None:
        on_start(len(todo))
    users = Counter(sample.id for sample, _ in todo)  # arms still to run, per sample
    images = ImageCache(config.out, settings)
    queue: asyncio.Queue[tuple[Sample, ArmSpec]] = asyncio.Queue()
    for item in todo:
        queue.put_nowait(item)

    async def one(sample: Sample, arm: ArmSpec) -> EvalRecord:
        t0 = time.perf_counter()

        def failed(why: str, image: ImageInfo | None = None) -> EvalRecord:
            return make_record(sample, arm, dataset, image, None, _ms(t0), why)

        try:
            try:
                image = await images.get(sample, users[sample.id])
            except (OSError, ValueError, APIError) as exc:  # unreadable, not an image, too big
                return failed(f"cannot read the image: {exc}")
            try:
                request = request_for(sample, arm, image, config)
            except ValidationError as exc:
                return failed(
                    f"cannot ask this sample: {validation_message(exc.errors())[0]}", image
                )
            try:
                response = await backend.answer(request)
            except SampleFailed as exc:
                return failed(str(exc), image)
        finally:
            images.release(sample)
        return make_record(sample, arm, dataset, image, response, _ms(t0))

    async def worker() -> None:
        while not queue.empty():
            sample, arm = queue.get_nowait()
            record = await one(sample, arm)
            results.append(record)
            summary.records[record.key] = record
            summary.done += 1
            summary.failed += record.error is not None
            if progress is not None:
                progress(record)

    workers = [asyncio.create_task(worker()) for _ in range(min(config.concurrency, len(todo)))]
    try:
        await asyncio.gather(*workers)
    except BackendDown as exc:
        summary.stopped = str(exc)
    finally:
        for task in workers:
            task.cancel()
        await asyncio.gather(*workers, return_exceptions=True)
        results.close()
        summary.elapsed_s = time.perf_counter() - started
        summary.total_elapsed_s, summary.runs = add_run_time(config.out, summary.elapsed_s, earlier)
    return summary


def _ms(t0: float) -> float:
    return (time.perf_counter() - t0) * 1000
