"""Wire models of ``magsrl eval``: one ``EvalRecord`` per sample and arm in ``results.jsonl``
(the trace viewer reads the same lines), and the ``EvalReport`` in ``report.json``."""

from __future__ import annotations

from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, Field, SecretStr, field_validator, model_validator

from magsrl.proto.episode import EpisodeOptions
from magsrl.proto.policy import Round
from magsrl.proto.vocab import Protocol, UpscaleMethod, ZoomMode

RESULTS_FILE = "results.jsonl"
REPORT_JSON = "report.json"
REPORT_MD = "report.md"
ACCURACY_PLOT = "accuracy.png"
MANIFEST_FILE = "manifest.json"
THUMB_DIR = "images"
SYNTHETIC = "synthetic"
# Episode fields an eval config also takes at its top level; the arms own zoom and upscale,
# and the sampling seed is the run's seed.
EPISODE_KEYS = tuple(k for k in EpisodeOptions.model_fields if k not in ("zoom", "upscale", "seed"))


class ArmSpec(BaseModel):
    """One arm of the ablation: how ``/answer`` is asked to zoom and to enlarge crops."""

    name: str
    zoom: ZoomMode
    upscale: UpscaleMethod


class EvalConfig(BaseModel):
    """One eval run. Fields in ``MANIFEST_FIELDS`` (``magsrl.eval.config``) must match to
    resume into the same folder; the episode's fields count at the top level there."""

    dataset: str = Field(description="A path a loader reads, or `synthetic`.")
    kind: str = "auto"
    split: str | None = None
    arms: list[ArmSpec] = Field(min_length=1)
    limit: int | None = Field(None, ge=1, description="Samples drawn with the seed; all if unset.")
    seed: int = Field(0, ge=0, description="Sample draw, option order, and bootstrap.")
    concurrency: int = Field(4, ge=1, le=256)
    out: Path
    backend: Literal["policy", "openai"] = "policy"
    policy_url: str = "http://127.0.0.1:8000"
    openai_url: str | None = Field(None, description="The openai backend's /v1 base URL.")
    openai_api_key: SecretStr | None = None
    magnifier_url: str = "http://127.0.0.1:8001"
    api_key: SecretStr | None = Field(None, description="Bearer key of the magsrl services.")
    model: str | None = Field(
        None, description="policy: an adapter (default: base); openai: the served model name."
    )
    episode: EpisodeOptions = Field(
        default_factory=EpisodeOptions,
        description="The episode's options, as /answer takes them; each arm sets zoom and "
        "upscale. Unset crop and protocol fields: the policy's (the openai backend: the "
        "policy's defaults).",
    )
    synthetic_size: tuple[int, int] = Field((2048, 1536), description="Canvas of `synthetic`.")

    @model_validator(mode="before")
    @classmethod
    def _flat_episode_keys(cls, data: Any) -> Any:
        """``protocol``, ``max_rounds``, ``temperature``, ``max_tokens`` and the crop fields
        may be given at the top level (as the CLI and older manifests do)."""
        if not isinstance(data, dict):
            return data
        flat = {k: data[k] for k in EPISODE_KEYS if k in data}
        if not flat:
            return data
        rest = {k: v for k, v in data.items() if k not in flat}
        episode = data.get("episode")
        base = episode.model_dump(exclude_unset=True) if isinstance(episode, BaseModel) else {}
        if isinstance(episode, dict):
            base = dict(episode)
        return {**rest, "episode": {**base, **flat}}

    @property
    def protocol(self) -> Protocol | None:
        return self.episode.protocol

    @property
    def max_rounds(self) -> int:
        return self.episode.max_rounds

    @property
    def temperature(self) -> float:
        return self.episode.temperature

    @property
    def max_tokens(self) -> int | None:
        return self.episode.max_tokens

    @field_validator("openai_url")
    @classmethod
    def _v1(cls, url: str | None) -> str | None:
        return url.rstrip("/") if url else url

    def check(self) -> None:
        if self.backend == "openai" and (not self.openai_url or not self.model):
            raise ValueError(
                "the openai backend needs --openai URL (the /v1 base) and --model NAME "
                "(the model that endpoint serves)"
            )


class EvalRecord(BaseModel):
    """One sample under one arm. ``question`` and ``options`` are as asked (options in the
    seed's shuffled order); ``gold`` is the right answer in that order (a letter for
    multiple choice). Boxes in ``rounds`` are in original-image pixels."""

    key: str = Field(description="'<sample_id>|<arm>': unique in a results file.")
    sample_id: str
    arm: str
    dataset: str
    category: str | None = None
    question: str
    options: list[str] | None = None
    gold: str
    answer: str = ""
    raw_answer: str = ""
    correct: bool = False
    rounds: list[Round] = Field(default_factory=list)
    zooms: int = Field(0, description="Zooms the magnifier served.")
    zoom_errors: int = Field(0, description="Zoom requests refused as malformed.")
    box_fractions: list[float] = Field(
        default_factory=list, description="Each served box's area over the image's."
    )
    image: str = Field(description="The image's path or URL, as the dataset gives it.")
    image_size: list[int] = Field(description="[width, height] of the original.")
    thumb: str | None = Field(
        None, description="A reduced copy, relative to the results file's folder."
    )
    latency_ms: float = Field(0.0, description="Wall clock of the sample, client side.")
    timing_ms: dict[str, float] = Field(
        default_factory=dict, description="The policy's split: total, model, magnifier..."
    )
    error: str | None = Field(
        None, description="Why the sample could not be answered; scored as wrong."
    )


class Estimate(BaseModel):
    """A point estimate with its bootstrap confidence interval."""

    value: float
    low: float
    high: float


class Accuracy(BaseModel):
    n: int
    correct: int
    accuracy: Estimate


class BoxStats(BaseModel):
    n: int = Field(description="Served boxes.")
    mean_fraction: float | None = Field(description="Mean box area over image area.")
    median_fraction: float | None
    p10_fraction: float | None
    p90_fraction: float | None


class LatencyStats(BaseModel):
    p50_ms: float | None
    p95_ms: float | None
    mean_ms: float | None
    model_ms: float | None = Field(description="Mean engine time per sample.")
    magnifier_ms: float | None = Field(description="Mean magnifier time per sample.")
    queue_ms: float | None = Field(
        None,
        description="Mean wait in the engine's batch queue; None where the engine cannot "
        "see it (an OpenAI upstream: that wait is inside model_ms).",
    )
    overhead_ms: float | None = Field(description="Mean of the rest, as the policy splits it.")


class ArmStats(BaseModel):
    arm: ArmSpec
    accuracy: Accuracy
    errors: int = Field(description="Samples that failed; counted as wrong.")
    zoom_rate: float = Field(description="Share of samples with at least one served zoom.")
    mean_zooms: float = Field(description="Served zooms per sample.")
    zoom_errors: int
    boxes: BoxStats
    latency: LatencyStats
    max_rounds: int | None = Field(
        None,
        description="The turn limit the arm's episodes ran under; None when the policy "
        "chose its protocol and did not say which.",
    )
    max_rounds_from: str | None = Field(
        None, description="Where max_rounds came from: the eval config, the protocol, zoom off."
    )


class McNemar(BaseModel):
    statistic: float = Field(description="b for the exact test; chi-square otherwise.")
    p_value: float
    method: Literal["exact", "chi2-cc"] = Field(
        description="exact binomial when the discordant pairs are few (< 25), else "
        "chi-square with continuity correction."
    )


class PairComparison(BaseModel):
    """Two arms on the same samples: ``a_only`` is right under a and wrong under b."""

    a: str
    b: str
    n: int = Field(description="Samples both arms answered (the pairs).")
    both_right: int
    a_only: int
    b_only: int
    both_wrong: int
    difference: Estimate = Field(description="accuracy(a) - accuracy(b), paired bootstrap.")
    mcnemar: McNemar


class EvalReport(BaseModel):
    dataset: str
    dataset_kind: str
    seed: int
    limit: int | None
    samples: int
    backend: dict[str, str] = Field(description="What answered: policy URL or OpenAI endpoint.")
    confidence: float
    bootstrap_resamples: int
    arms: list[ArmStats]
    categories: dict[str, dict[str, Accuracy]] = Field(description="category -> arm -> accuracy.")
    comparisons: list[PairComparison]
    created: str
    elapsed_s: float = Field(description="Wall clock of the run that finished the file.")
    total_elapsed_s: float | None = Field(
        None,
        description="Wall clock of every run that wrote the file, resumed ones included; "
        "None when earlier runs left no time.",
    )
    runs: int = Field(1, description="How many runs wrote the file.")
