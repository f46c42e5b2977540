"""Trainer and rollout-worker settings: one validated place each, prefix ``MAGSRL_``."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Literal

from pydantic import Field, field_validator

from magsrl.common.settings import CommaList, ServiceSettings, default_cache_dir, split_comma_list

DEFAULT_PORT = 8003


class TrainerSettings(ServiceSettings):
    port: int = Field(DEFAULT_PORT, ge=0, le=65535)
    runs_dir: Path = Field(
        default_factory=lambda: default_cache_dir() / "runs",
        description="Run folders: config, checkpoints, adapters, metrics, plots. The policy "
        "(or vLLM) must read adapters at the same path.",
    )
    image_store_dir: Path | None = Field(
        None,
        description="The shared image store rollout results refer to (workers write, the "
        "learner reads). Default: <runs_dir>/images.",
    )
    image_store_ttl_s: float | None = Field(
        7 * 86400.0,
        gt=0,
        allow_inf_nan=False,
        description="When a run ends, images in the store not written for this long are "
        "deleted (writers re-put what they use, so a live run's images stay young); null "
        "keeps everything (a store another tool cleans, e.g. by an S3 lifecycle rule).",
    )
    data_roots: CommaList = Field(
        default_factory=list,
        description="Folders (comma-separated) a run's dataset, curriculum and images may be "
        "read from, besides the runs directory; paths are checked after resolving symlinks. "
        "Empty: the trainer's working directory and the magsrl cache (~/.cache/magsrl).",
    )
    weights_roots: CommaList = Field(
        default_factory=list,
        description="More folders (comma-separated) a run's local `model` folder may be "
        "loaded from, besides the data roots, the runs directory and the Hugging Face cache "
        "(HF_HOME); the same variable as the policy's.",
    )
    max_dataset_bytes: int = Field(
        1 << 30, ge=1, description="Largest dataset or curriculum file a run may name; 413."
    )
    max_dataset_rows: int = Field(
        200_000, ge=1, description="Most samples a run's dataset may hold (after max_samples)."
    )
    max_nonfinite_steps: int = Field(
        3,
        ge=1,
        description="Consecutive steps with a non-finite loss (skipped, nothing published) "
        "after which the run fails.",
    )
    dependency_wait_s: float = Field(
        3600.0,
        gt=0,
        description="Longest a run stays paused while Redis, the policy or the magnifier is "
        "away; then it fails.",
    )
    device: Literal["auto", "cpu", "cuda"] = "auto"
    max_queued_runs: int = Field(
        4, ge=0, le=100, description="Runs that may wait behind the one training; more get 409."
    )
    checkpoint_every: int = Field(1, ge=1, description="Steps between checkpoints.")
    keep_checkpoints: int = Field(2, ge=1, description="Newest checkpoints kept per run.")
    logprob_warn: float = Field(
        1e-2,
        gt=0,
        description="A learner/sampler mean |log-prob| difference above this is a warning "
        "event: the learner is not training on what the sampler sampled.",
    )
    step_timeout_s: float = Field(
        1800.0, gt=0, description="Longest wait for one step's rollouts before the run fails."
    )
    resume: bool = Field(True, description="On start, resume runs a crash interrupted.")
    tensorboard: bool = Field(True, description="Write TensorBoard scalars per run.")
    policy_timeout_s: float = Field(120.0, gt=0, description="Adapter load/unload calls.")
    # The same variables as the policy's: the learner must cut images into the same tokens.
    # Unset, they come from the policy (GET /v1/limits); set, they must equal its values.
    min_image_pixels: int | None = Field(None, ge=1, description="As the policy's.")
    max_image_pixels_model: int | None = Field(None, ge=1, description="As the policy's.")
    max_images: int | None = Field(
        None, ge=1, le=64, description="As the policy's: images per prompt, for rollouts."
    )

    @field_validator("data_roots", "weights_roots", mode="before")
    @classmethod
    def _roots(cls, value: object) -> object:
        return split_comma_list(value)

    def image_store_path(self) -> Path:
        return self.image_store_dir or self.runs_dir / "images"

    def read_roots(self) -> list[Path]:
        """Where a run may read from, resolved: the data roots (or their default) and runs."""
        roots = [Path(r) for r in self.data_roots] or [Path.cwd(), default_cache_dir()]
        return [Path(os.path.realpath(r)) for r in [*roots, self.runs_dir]]

    def model_roots(self) -> list[Path]:
        """Where a run's local ``model`` may be loaded from, resolved: the read roots, the
        Hugging Face cache (compose mounts the engine's there) and the weights roots."""
        from magsrl.models.hub import hub_cache_dir

        caches = [hub_cache_dir()]
        if os.environ.get("HF_HOME"):
            caches.append(Path(os.environ["HF_HOME"]))
        extra = [Path(os.path.realpath(r)) for r in [*caches, *self.weights_roots]]
        return [*self.read_roots(), *extra]


class WorkerSettings(ServiceSettings):
    """``magsrl serve rollout-worker``: no HTTP server; it takes jobs from Redis."""

    worker_name: str | None = Field(None, description="Consumer name (default: host-pid).")
    worker_concurrency: int = Field(
        4, ge=1, le=256, description="Rollouts in flight at once (the policy batches them)."
    )
    worker_poll_s: float = Field(0.5, gt=0, description="How often active runs are looked up.")
    image_store_dir: Path | None = Field(
        None,
        description="The shared image store the trainer reads (its MAGSRL_IMAGE_STORE_DIR): "
        "results carry references, not pixels. Default: <runs_dir>/images; neither set: "
        "images travel inline in each result (megabytes through Redis).",
    )
    runs_dir: Path | None = Field(None, description="The trainer's MAGSRL_RUNS_DIR, if shared.")
    policy_timeout_s: float = Field(600.0, gt=0)
    magnifier_timeout_s: float = Field(120.0, gt=0)
    max_image_pixels: int = Field(
        64_000_000, ge=1, description="Largest image decoded (as the policy's)."
    )
    # Jobs carry the limits the trainer took from the policy; set here, a job that disagrees
    # is refused (the worker was started for another engine).
    max_image_pixels_model: int | None = Field(None, ge=1, description="As the policy's.")
    max_images: int | None = Field(None, ge=1, le=64, description="As the policy's.")
    dependency_wait_s: float = Field(
        600.0,
        gt=0,
        description="Longest a worker keeps retrying a job while the policy, the magnifier "
        "or Redis is away, before leaving it to be delivered again.",
    )
