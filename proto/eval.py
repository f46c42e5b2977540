"""Wire models of ``magsrl eval``: one ``EvalRecord`` per sample and arm in ``results.jsonl``
(the trace viewer reads the same lines), and the ``EvalReport`` in ``report.json``."""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, Field

from magsrl.proto.policy import Round

RESULTS_FILE = "results.jsonl"
REPORT_JSON = "report.json"
REPORT_MD = "report.md"
ACCURACY_PLOT = "accuracy.png"
MANIFEST_FILE = "manifest.json"
THUMB_DIR = "images"


class ArmSpec(BaseModel):
    """One arm of the ablation: how ``/answer`` is asked to zoom and to enlarge crops."""

    name: str
    zoom: Literal["auto", "off", "force"]
    upscale: Literal["sr", "bicubic", "crop"]


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
