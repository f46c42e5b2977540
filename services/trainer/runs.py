"""Training runs as records on disk and one worker task: runs queue, one trains at a time,
each step becomes an event for ``/v1/runs/{id}/events``, and a restarted trainer resumes
what a crash interrupted. Plain Python: the HTTP layer (api.py) only calls into it."""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import secrets
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from pathlib import Path

import httpx

from magsrl.clients.policy import PolicyClient, PolicyError
from magsrl.common.errors import BadRequest, Conflict, NotFound, PayloadTooLarge
from magsrl.common.files import atomic_write_text
from magsrl.common.image_blobs import open_image_store
from magsrl.proto.trainer import IN_SLOT, TERMINAL, Checkpoint, RunEvent, RunInfo, RunStatus
from magsrl.trainer.config import TrainerSettings
from magsrl.trainer.paths import check_size, confine, confine_model, run_folder
from magsrl.trainer.recovery import (
    DEPENDENCY_POLL_MAX_S,
    away,
    dependencies_up,
    dependency_errors,
)
from magsrl.trainer.run_config import RunConfig
from magsrl.trainer.run_loop import Hooks, RunFailed, RunLoop, adapter_name
from magsrl.trainer.schedule import Schedule, load_run_samples
from magsrl.trainer.weights_sync import version_folder

log = logging.getLogger("magsrl.trainer")
RUN_ID_HEX = 3  # bytes of randomness after the run's name: <name>-<6 hex>
ADAPTER_CHECK_S = 2.0  # how often a training run's adapter is looked for in the policy


@dataclass
class Run:
    info: RunInfo
    config: RunConfig
    events: list[RunEvent] = field(default_factory=list)
    changed: asyncio.Condition = field(default_factory=asyncio.Condition)
    cancelled: asyncio.Event = field(default_factory=asyncio.Event)
    publishing: asyncio.Lock = field(default_factory=asyncio.Lock)  # see Hooks.publishing

    @property
    def dir(self) -> Path:
        return Path(self.info.output_dir)


class RunManager:
    def __init__(self, settings: TrainerSettings, http: httpx.AsyncClient) -> None:
        self.settings = settings
        self.http = http
        api_key = settings.api_key.get_secret_value() if settings.api_key else None
        self.policy = PolicyClient(
            settings.policy_url, api_key=api_key, timeout_s=settings.policy_timeout_s, client=http
        )
        self.runs: dict[str, Run] = {}
        self.pending: asyncio.Queue[str] = asyncio.Queue()
        self.active: str | None = None
        self._task: asyncio.Task[None] | None = None

    # ---- lifecycle ------------------------------------------------------------------------
    async def start(self) -> None:
        self.settings.runs_dir.mkdir(parents=True, exist_ok=True)
        interrupted: list[Run] = []
        for status_file in sorted(self.settings.runs_dir.glob("*/status.json")):
            try:
                info = RunInfo.model_validate_json(status_file.read_text())
                config = RunConfig.from_yaml(status_file.parent / "config.yaml")
            except (OSError, ValueError) as exc:
                log.warning("ignoring %s: %s", status_file.parent, exc)
                continue
            run = Run(info, config, events=self._read_events(status_file.parent))
            self.runs[info.run_id] = run
            if info.status == "queued" or info.status in IN_SLOT:
                interrupted.append(run)
        for run in sorted(
            interrupted, key=lambda r: (r.info.status not in IN_SLOT, r.info.created_at)
        ):
            if self.settings.resume:
                log.info("resuming run %s at step %d", run.info.run_id, run.info.step)
                self._set_status(run, "queued", "resuming after a trainer restart")
                self.pending.put_nowait(run.info.run_id)
            else:
                self._set_status(run, "failed", "the trainer restarted (MAGSRL_RESUME=false)")
        self._task = asyncio.create_task(self._worker())

    async def close(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task

    # ---- API ------------------------------------------------------------------------------
    async def submit(self, config: RunConfig) -> Run:
        waiting = sum(1 for r in self.runs.values() if r.info.status == "queued")
        if self.active is not None and waiting >= self.settings.max_queued_runs:
            raise Conflict(
                f"run {self.active} is training and {waiting} runs are queued (the limit, "
                "MAGSRL_MAX_QUEUED_RUNS); cancel one (POST /v1/runs/{id}/cancel) or wait"
            )
        run_id = f"{config.name}-{secrets.token_hex(RUN_ID_HEX)}"
        out = run_folder(config.output_dir, self.settings.runs_dir, run_id)
        # Reading a dataset takes seconds for 100k rows: off the event loop, so /health and
        # every other request keep being answered meanwhile.
        config = await asyncio.to_thread(self._check_dataset, config)
        config = await asyncio.to_thread(self._check_model, config)
        out = run_folder(config.output_dir, self.settings.runs_dir, run_id)  # taken meanwhile?
        out.mkdir(parents=True, exist_ok=True)
        (out / "config.yaml").write_text(config.to_yaml())
        info = RunInfo(
            run_id=run_id,
            name=config.name,
            status="queued",
            step=0,
            total=config.steps,
            created_at=time.time(),
            output_dir=str(out.resolve()),
            warnings=config.caveats(),
        )
        run = Run(info, config)
        self.runs[run_id] = run
        self._set_status(run, "queued")
        self.pending.put_nowait(run_id)
        return run

    def _check_dataset(self, config: RunConfig) -> RunConfig:
        """Refuse now, with the reason, what would only fail once the run started; the
        config comes back with the dataset's resolved path (the one that was checked)."""
        roots = self.settings.read_roots()
        path = confine(config.dataset, roots, "dataset")
        check_size(path, self.settings.max_dataset_bytes, "dataset")
        config = config.model_copy(update={"dataset": str(path)})
        limit = self.settings.max_dataset_rows
        # One row past the limit tells "too many" without reading the rest of the file.
        read = min(config.max_samples or limit + 1, limit + 1)
        probe = config.model_copy(update={"max_samples": read})
        try:
            samples = load_run_samples(probe)
        except (ValueError, OSError) as exc:
            raise BadRequest(_dataset_problem(exc, path), param="dataset") from exc
        if len(samples) > limit:
            raise PayloadTooLarge(
                f"dataset has more than {limit} samples, the trainer's limit "
                "(MAGSRL_MAX_DATASET_ROWS); set max_samples or use a smaller file",
                param="dataset",
            )
        samples = samples[:limit]
        for i, sample in enumerate(samples):
            if "://" not in sample.image:
                confine(sample.image, roots, f"dataset row {i + 1} image")
        try:
            Schedule(config, samples)
        except (ValueError, OSError) as exc:
            raise BadRequest(_dataset_problem(exc, path), param="dataset") from exc
        return config

    def _check_model(self, config: RunConfig) -> RunConfig:
        """A local model folder only from the trainer's roots, resolved as it was checked."""
        model = confine_model(config.model, self.settings.model_roots())
        return config.model_copy(update={"model": model})

    def get(self, run_id: str) -> Run:
        run = self.runs.get(run_id)
        if run is None:
            raise NotFound(f"no run {run_id!r}; GET /v1/runs lists them", param="run_id")
        return run

    def position(self, run: Run) -> int:
        queued = sorted(
            (r for r in self.runs.values() if r.info.status == "queued"),
            key=lambda r: r.info.created_at,
        )
        ahead = [r for r in queued if r.info.created_at < run.info.created_at]
        return len(ahead) + (1 if self.active else 0)

    def cancel(self, run_id: str) -> Run:
        run = self.get(run_id)
        if run.info.status in TERMINAL:
            raise Conflict(f"run {run_id} already {run.info.status}")
        run.cancelled.set()
        if run.info.status == "queued":
            self._set_status(run, "cancelled", "cancelled before it started")
        return run

    async def events(self, run_id: str) -> AsyncIterator[RunEvent]:
        """Every event so far, then new ones as they happen, until the run ends."""
        run = self.get(run_id)
        sent = 0
        while True:
            async with run.changed:
                while sent >= len(run.events) and run.info.status not in TERMINAL:
                    await run.changed.wait()
            while sent < len(run.events):
                yield run.events[sent]
                sent += 1
            if run.info.status in TERMINAL:
                return

    # ---- records --------------------------------------------------------------------------
    def _read_events(self, run_dir: Path) -> list[RunEvent]:
        path = run_dir / "events.jsonl"
        if not path.exists():
            return []
        return [
            RunEvent.model_validate_json(line) for line in path.read_text().splitlines() if line
        ]

    def _emit(self, run: Run, event: RunEvent) -> None:
        run.events.append(event)
        with (run.dir / "events.jsonl").open("a") as fh:
            fh.write(event.model_dump_json() + "\n")
        atomic_write_text(run.dir / "status.json", run.info.model_dump_json(indent=2))

        async def notify() -> None:
            async with run.changed:
                run.changed.notify_all()

        with contextlib.suppress(RuntimeError):  # no loop: called while starting up
            asyncio.get_running_loop().create_task(notify())

    def _event(self, run: Run, kind: str, **fields: object) -> RunEvent:
        return RunEvent(
            type=kind,  # type: ignore[arg-type]
            run_id=run.info.run_id,
            step=run.info.step,
            total=run.info.total,
            time=time.time(),
            **fields,  # type: ignore[arg-type]
        )

    def _set_status(self, run: Run, status: RunStatus, message: str | None = None) -> None:
        run.info.status = status
        now = time.time()
        if status == "running" and run.info.started_at is None:
            run.info.started_at = now
        if status in TERMINAL:
            run.info.finished_at = now
        if status == "failed":
            run.info.error = message
        run.info.reason = message if status == "paused" else None
        self._emit(run, self._event(run, "status", status=status, message=message))

    def _hooks(self, run: Run) -> Hooks:
        def on_step(step: int, metrics: dict[str, float]) -> None:
            run.info.step = step
            run.info.metrics = metrics
            self._emit(run, self._event(run, "step", metrics=metrics))

        def on_warning(step: int, message: str) -> None:
            run.info.warnings.append(message)
            self._emit(run, self._event(run, "warning", message=message))

        def on_version(version: int, name: str | None) -> None:
            run.info.version = version
            run.info.policy_model = name

        def on_checkpoint(step: int, path: str) -> None:
            kept = [c for c in run.info.checkpoints if Path(c.path).exists()]
            run.info.checkpoints = [*kept, Checkpoint(step=step, path=path)]

        return Hooks(on_step, on_warning, on_version, on_checkpoint, run.cancelled, run.publishing)

    # ---- the one training slot ------------------------------------------------------------
    async def _worker(self) -> None:
        while True:
            run_id = await self.pending.get()
            run = self.runs[run_id]
            if run.info.status != "queued":
                continue  # cancelled while waiting
            self.active = run_id
            self._set_status(run, "running")
            try:
                final = await self._train(run)
            except asyncio.CancelledError:
                if not run.cancelled.is_set():
                    raise  # the trainer is shutting down: the run stays "running" and resumes
                self._set_status(run, "cancelled", f"cancelled at step {run.info.step}")
            except RunFailed as exc:
                self._set_status(run, "failed", str(exc))
            except Exception as exc:
                log.exception("run %s failed", run_id)
                self._set_status(run, "failed", f"{exc.__class__.__name__}: {exc}")
            else:
                run.info.adapter = final["adapter"]
                run.info.plots = final["plots"]
                self._set_status(run, "completed")
            finally:
                self.active = None
            # Cancelled, failed or completed: its adapters leave the policy, whose adapter
            # limit then counts only live runs' (the final one stays on disk, loadable).
            await self._unload(run)
            await self._prune_images()
            await asyncio.sleep(0)

    async def _prune_images(self) -> None:
        """Bounds the shared image store, which every run's rollouts add to (about 180 MB a
        step at 64 rollouts of 3.5 MP): old images go when a run ends, off the event loop.
        A failure only logs: the next run's end tries again."""
        ttl, folder = self.settings.image_store_ttl_s, self.settings.image_store_path()
        prune = getattr(open_image_store(folder), "prune", None)
        if ttl is None or prune is None or not folder.is_dir():
            return
        try:
            stats = await asyncio.to_thread(prune, ttl)
        except OSError as exc:
            log.warning("image store prune failed: %s", exc)
            return
        if stats.deleted:
            log.info(
                "image store: deleted %d images (%.1f MB) older than %gs, kept %d",
                stats.deleted,
                stats.freed_bytes / 1e6,
                ttl,
                stats.kept,
            )

    async def _train(self, run: Run) -> dict[str, object]:
        """The run to its end; while Redis, the policy or the magnifier is away it is
        "paused" (a status event with the reason) and, once they answer again, "running"
        from its last checkpoint."""
        while True:
            loop = RunLoop(
                run.info.run_id, run.config, run.dir, self.settings, self._hooks(run), self.http
            )
            keeper = asyncio.create_task(self._keep_adapter_loaded(run))
            try:
                return await loop.run()
            except dependency_errors() as exc:
                if run.cancelled.is_set():
                    raise asyncio.CancelledError from exc
                self._set_status(
                    run,
                    "paused",
                    f"paused at step {run.info.step}: {away(exc)}; the run resumes from its last "
                    "checkpoint when the dependency answers again "
                    f"(for up to {self.settings.dependency_wait_s:g}s, MAGSRL_DEPENDENCY_WAIT_S)",
                )
                await self._wait_for_dependencies(run, exc)
                self._set_status(run, "running", "resumed: the dependencies answer again")
            finally:
                keeper.cancel()

    async def _keep_adapter_loaded(self, run: Run) -> None:
        """A restarted policy has lost its adapters (or full weights), and workers cannot
        roll out the run's version until it is loaded again: look now and then, and load it
        back."""
        while True:
            await asyncio.sleep(ADAPTER_CHECK_S)
            async with run.publishing:
                await self._reload_if_lost(run)

    async def _reload_if_lost(self, run: Run) -> None:
        name = run.info.policy_model
        if name is None:
            return
        try:
            if name in {m.id for m in await self.policy.models()}:
                return
            folder = str(version_folder(run.dir, run.info.version).resolve())
            if run.config.lora.enabled:
                await self.policy.load_adapter(name, folder)
            else:
                await self.policy.load_weights(folder, name)
            log.warning("run %s: the policy had lost %s; loaded it again", run.info.run_id, name)
        except PolicyError as exc:  # a policy still starting: next look
            log.info("run %s: adapter check: %s", run.info.run_id, exc.message)

    async def _wait_for_dependencies(self, run: Run, cause: BaseException) -> None:
        """Until Redis, the policy and the magnifier all answer (or the run is cancelled,
        or they stay away past MAGSRL_DEPENDENCY_WAIT_S: then the run fails)."""
        delay = 0.5
        deadline = time.monotonic() + self.settings.dependency_wait_s
        while not run.cancelled.is_set():
            if await dependencies_up(self.settings, self.http):
                return
            if time.monotonic() > deadline:
                raise RunFailed(
                    f"paused for {self.settings.dependency_wait_s:g}s "
                    f"(MAGSRL_DEPENDENCY_WAIT_S) and a dependency is still away: {cause}"
                )
            await asyncio.sleep(delay)
            delay = min(delay * 2, DEPENDENCY_POLL_MAX_S)
        raise asyncio.CancelledError

    async def _unload(self, run: Run) -> None:
        """A finished, failed or cancelled run gives back what it holds in the policy: its
        adapters (the 8-adapter limit counts only live ones), or, for full fine-tuning, the
        base model's own weights."""
        if not run.config.lora.enabled:
            with contextlib.suppress(PolicyError):
                status = await self.policy.weights()
                if status is not None and status.name == run.info.policy_model:
                    await self.policy.reset_weights()
            return
        # The newest version, and the older ones queued jobs may still have named: one
        # more than async_steps (a crash between loading a version and unloading the last).
        names = {run.info.policy_model}
        for back in range(1, run.config.async_steps + 2):
            names.add(adapter_name(run.info.run_id, max(run.info.version - back, 0)))
        for name in sorted(n for n in names if n):
            try:
                await self.policy.unload_adapter(name, missing_ok=True)
            except PolicyError as exc:
                log.warning("run %s: could not unload %s: %s", run.info.run_id, name, exc.message)


def _dataset_problem(exc: Exception, path: Path) -> str:
    """A loader's message, cut to its first line: the loaders name the file and row, and
    a row's content stays out of it (detect_kind quotes a first row's keys)."""
    message = str(exc).splitlines()[0] if str(exc) else exc.__class__.__name__
    if "first row has keys" in message:
        return f"cannot tell which dataset {path} is; pass dataset_kind"
    return message


def events_as_sse(event: RunEvent) -> str:
    return f"event: {event.type}\ndata: {json.dumps(event.model_dump())}\n\n"
