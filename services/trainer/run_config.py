"""One validated config for a training run, in the spirit of TRL's ``GRPOConfig``: every field
has help text and inconsistent values are refused with a message that says how to fix them.

It is the body of ``POST /v1/runs`` and the file ``magsrl train CONFIG.yaml`` reads; the whole
config is saved with each run. It imports no torch, so a client can validate a run without the
trainer extra. Example: ``examples/train-tiny.yaml``.
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any, Literal, Self

import yaml
from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

from magsrl.common.unknown_keys import check_unknown_keys
from magsrl.proto.episode import MAX_ROUNDS_LIMIT, EpisodeOptions
from magsrl.proto.rollout import RewardOptions
from magsrl.proto.vocab import Protocol

if TYPE_CHECKING:
    from magsrl.trainer.grpo import LossConfig

# The judge's levels: zoom_score 1-3 easy, 4-7 medium, 8-10 hard.
Level = Literal["easy", "medium", "hard"]
# A stage's zoom mode: a run always lets the model zoom (off would train nothing to zoom).
StageZoom = Literal["auto", "force"]
NAME_PATTERN = r"^[a-z0-9][a-z0-9_-]{0,47}$"
# eps bounds: checked by GRPOSettings' validator (for a fix-it message), shown in the JSON Schema.
_UNIT = {"exclusiveMinimum": 0, "maximum": 1}
# A run holds async_steps + 1 adapter versions in the policy at once (the in-flight jobs'
# and the newest); 3 keeps that to half of the policy's 8-adapter limit.
MAX_ASYNC_STEPS = 3


class _Strict(BaseModel):
    # A typo ("learning_rte") must fail loudly, not silently run with the default; errors
    # name the field without echoing the whole submitted config.
    model_config = ConfigDict(extra="forbid", hide_input_in_errors=True, allow_inf_nan=False)

    @model_validator(mode="before")
    @classmethod
    def _known_keys(cls, data: Any) -> Any:
        return check_unknown_keys(cls, data)


class GRPOSettings(_Strict):
    group_size: int = Field(
        8, ge=1, description="G: samples per prompt, compared in a group (>= 2)."
    )
    prompts_per_step: int = Field(
        8, ge=1, description="Distinct prompts per optimizer step (each sampled G times)."
    )
    micro_batch_size: int = Field(
        4, ge=1, description="Sequences per forward/backward; divides prompts_per_step * G."
    )
    learning_rate: float = Field(1e-5, gt=0, le=1, description="AdamW peak learning rate.")
    weight_decay: float = Field(0.0, ge=0, description="AdamW weight decay.")
    max_grad_norm: float = Field(1.0, ge=0, description="Gradient clipping norm; 0 turns it off.")
    temperature: float = Field(
        1.0, gt=0, le=2, description="Rollout sampling temperature; the learner scores with it too."
    )
    top_p: float = Field(
        1.0, gt=0, le=1, description="Rollout nucleus sampling; below 1 it is no longer on-policy."
    )
    max_new_tokens: int = Field(512, ge=1, le=32768, description="Most generated tokens per round.")
    max_rounds: int = Field(
        2,
        ge=1,
        le=MAX_ROUNDS_LIMIT,
        description="Model turns per episode, the answering turn included (2: zoom, then answer).",
    )
    eps_low: float = Field(
        0.2, json_schema_extra=_UNIT, description="Clip the ratio below at 1 - eps_low (GRPO: 0.2)."
    )
    eps_high: float = Field(
        0.28, json_schema_extra=_UNIT, description="Clip above at 1 + eps_high (DAPO: 0.28)."
    )
    beta: float = Field(
        0.0,
        ge=0,
        description="KL weight (k3); 0 is off. With LoRA the reference is the base model with the "
        "adapter disabled (free); full fine-tuning keeps a second model copy.",
    )
    scale_rewards: Literal["group", "none"] = Field(
        "group", description="group: divide advantages by the group std (GRPO); none: Dr. GRPO."
    )
    drop_zero_variance: bool = Field(
        True, description="Leave out groups whose rewards are all equal (their advantage is 0)."
    )
    loss_aggregation: Literal["token", "sequence", "dr_grpo"] = Field(
        "token",
        description="token: mean over all completion tokens (DAPO); sequence: per sequence, then "
        "over sequences (GRPO); dr_grpo: sum / (sequences * max_new_tokens * max_rounds).",
    )
    num_iterations: int = Field(
        1, ge=1, le=16, description="μ: policy updates per batch of rollouts (1: on-policy)."
    )
    # ---- rollout/train mismatch correction (docs/trainer.md, "Off-policy correction") ----
    clip_ratio_c: float | None = Field(
        3.0,
        gt=1,
        description="Dual clip: with A < 0 a token's loss is at most -A * clip_ratio_c "
        "(verl's clip_ratio_c, 3); null turns it off.",
    )
    tis_cap: float | None = Field(
        2.0,
        ge=1,
        description="Truncated importance sampling: each token's surrogate is weighted by "
        "min(learner/sampler ratio, tis_cap) (verl's tis_imp_ratio_cap / rollout_is_threshold, "
        "2); null turns it off.",
    )
    seq_mask_threshold: float | None = Field(
        None,
        gt=1,
        description="Mask sequences whose geometric-mean learner/sampler ratio is outside "
        "[1/t, t] (verl's geometric rejection; verl suggests 1.0002-1.001); null is off.",
    )
    disable_dropout: bool = Field(
        True,
        description="Every learner forward runs with dropout off, so an on-policy ratio is "
        "exactly 1 and logprob_diff measures the engines, not dropout noise (TRL's "
        "disable_dropout). False keeps LoRA dropout in the gradient forward.",
    )
    # ---- dynamic sampling, failures, overlong episodes ----
    max_refills: int = Field(
        2,
        ge=0,
        le=16,
        description="Dynamic sampling (DAPO): rounds of new prompts drawn to replace groups "
        "with no reward variance, per step; 0 is off.",
    )
    overlong: Literal["keep", "mask", "penalty"] = Field(
        "keep",
        description="Episodes cut by max_new_tokens: keep (TRL, verl default); mask: no loss "
        "(DAPO's overlong filtering, TRL mask_truncated_completions); penalty: subtract "
        "rewards.overlong.",
    )
    # ---- optimisation ----
    lr_schedule: Literal["constant", "cosine"] = Field(
        "constant", description="After warmup: constant, or cosine decay to min_lr_ratio * lr."
    )
    warmup_steps: int = Field(0, ge=0, description="Linear learning-rate warmup, in steps.")
    min_lr_ratio: float = Field(
        0.0, ge=0, le=1, description="Cosine's floor, as a fraction of learning_rate."
    )
    gradient_checkpointing: Literal["auto", "on", "off"] = Field(
        "auto",
        description="Recompute activations in backward (less memory, ~30% more compute); "
        "auto: on for cuda, off on CPU.",
    )

    @model_validator(mode="after")
    def _consistent(self) -> Self:
        if self.group_size < 2:
            raise ValueError(
                f"grpo.group_size={self.group_size}: GRPO compares samples within a group (and "
                "scale_rewards='group' divides by its std); set grpo.group_size to 2 or more"
            )
        for name in ("eps_low", "eps_high"):
            value = getattr(self, name)
            if not 0.0 < value <= 1.0:
                raise ValueError(
                    f"grpo.{name}={value} is outside (0, 1]: it is the clip width around a "
                    "ratio of 1; set it to e.g. 0.2 (eps_low) or 0.28 (eps_high)"
                )
        n = self.sequences_per_step
        if n % self.micro_batch_size:
            divisors = [d for d in range(1, n + 1) if n % d == 0]
            raise ValueError(
                f"grpo.micro_batch_size={self.micro_batch_size} does not divide "
                f"grpo.prompts_per_step * grpo.group_size = {n} sequences per step; set "
                f"micro_batch_size to one of {divisors[:12]}"
            )
        return self

    @property
    def sequences_per_step(self) -> int:
        return self.prompts_per_step * self.group_size


# RewardWeights fields that are options of the scoring, not weights of a component.
_REWARD_OPTIONS = ("answer_slot", "degenerate_box_area", "bad_box_cap")


class RewardWeights(_Strict):
    """The reward composition (``magsrl.trainer.rewards``; components in [0, 1]):
    ``accuracy * acc + token_fraction * tok`` (primary), minus ``format * (1 - fmt)``,
    ``zoom_validity * bad`` and ``overlong * cut`` (penalties), plus, only with a right
    answer, ``zoom_iou * iou + tool_bonus * zoomed``. Every weight is >= 0, and the
    penalties sum below ``accuracy``, so a right answer always outscores a wrong one."""

    accuracy: float = Field(1.0, ge=0, description="Answer accuracy, by the dataset's scorer.")
    format: float = Field(
        0.1, ge=0, description="Penalty x the share of rounds that are not well formed."
    )
    zoom_validity: float = Field(
        0.1,
        ge=0,
        description="Penalty x bad boxes (invalid, near-whole-image, over the per-round "
        "limit), counted up to bad_box_cap.",
    )
    zoom_iou: float = Field(
        0.0,
        ge=0,
        description="Bonus (right answers only) x mean best-match IoU of the boxes with the "
        "dataset's box; 0 is off.",
    )
    tool_bonus: float = Field(
        0.0,
        ge=0,
        description="Bonus when the episode zoomed and the answer is right (DeepEyes' "
        "conditional tool reward); 0 is off.",
    )
    overlong: float = Field(
        0.1, ge=0, description="Penalty for an episode cut by max_new_tokens (overlong: penalty)."
    )
    token_fraction: float = Field(
        0.0, ge=0, description="Fraction of completion tokens equal to target_token (debug)."
    )
    target_token: str | None = Field(
        None, min_length=1, description="The token token_fraction counts (needed when it is > 0)."
    )
    answer_slot: Literal["required", "free_text"] = Field(
        "required",
        description="required: an answer counts only inside <answer>; free_text: any reply.",
    )
    degenerate_box_area: float = Field(
        0.9, gt=0, le=1, description="A box covering this share of the image is degenerate."
    )
    bad_box_cap: int = Field(
        4, ge=1, le=64, description="Bad boxes counted up to this many (then the full penalty)."
    )

    @model_validator(mode="after")
    def _some_signal(self) -> Self:
        # overlong is left out: it only weighs under grpo.overlong: penalty.
        if not any(v for k, v in self.weights().items() if k != "overlong"):
            raise ValueError("rewards are all 0, so every advantage is 0: set rewards.accuracy > 0")
        penalties = self.format + self.zoom_validity + self.overlong
        if self.accuracy > 0 and penalties >= self.accuracy:
            raise ValueError(
                f"rewards.format + zoom_validity + overlong = {penalties:g} is not below "
                f"rewards.accuracy = {self.accuracy:g}: a wrong answer could then outscore a "
                "right one; lower the penalties (e.g. 0.1 each)"
            )
        if self.token_fraction > 0 and self.target_token is None:
            raise ValueError(
                f"rewards.token_fraction={self.token_fraction} counts tokens equal to "
                "rewards.target_token, which is unset: set it (e.g. 'the') or token_fraction: 0"
            )
        return self

    def weights(self) -> dict[str, float]:
        """Component name -> weight, as ``RolloutJob.rewards`` and ``compute_reward`` take them
        (``target_token`` and the options travel separately)."""
        return self.model_dump(exclude={"target_token", *_REWARD_OPTIONS})

    def options(self) -> RewardOptions:
        """The scoring options, as ``RolloutJob.reward_options`` carries them."""
        return RewardOptions(**self.model_dump(include=set(_REWARD_OPTIONS)))


class LoraSettings(_Strict):
    enabled: bool = Field(True, description="LoRA adapters (peft); False is full fine-tuning.")
    r: int = Field(16, ge=1, le=1024, description="LoRA rank.")
    alpha: float = Field(32.0, gt=0, description="LoRA alpha; the update is scaled by alpha / r.")
    dropout: float = Field(0.05, ge=0, lt=1, description="LoRA dropout.")
    target_modules: list[str] | Literal["all-linear"] = Field(
        "all-linear", description="Module names (e.g. [q_proj, v_proj]), or all-linear."
    )
    train_vision: bool = Field(
        False,
        description="Train the vision tower (ViT and merger) too: full fine-tuning updates its "
        "weights, LoRA adapts its linear layers. Off: it stays frozen, the language model learns.",
    )

    @field_validator("target_modules")
    @classmethod
    def _nonempty(cls, value: list[str] | str) -> list[str] | str:
        if isinstance(value, list) and not value:
            raise ValueError("target_modules is empty: list module names or use 'all-linear'")
        return value


class Stage(_Strict):
    """A span of steps with its own levels, zoom mode and prompt suffix. ``zoom: force`` is
    MGPO's grounding turn (round 1 must name a region); ``prompt_suffix: stage1`` appends
    Mags-RL's stage-1 suffix (think, zoom when unclear, then rethink and answer in tags)."""

    levels: list[Level] | None = Field(
        None, min_length=1, description="Judge levels to draw from (staged only); all if unset."
    )
    steps: int | None = Field(None, ge=1, description="Length in optimizer steps.")
    fraction: float | None = Field(
        None, gt=0, le=1, description="Length as a fraction of the run's steps (instead of steps)."
    )
    zoom: StageZoom = Field("auto", description="auto: model decides; force: MGPO.")
    prompt_suffix: Literal["stage1"] | None = Field(None, description="Suffix to the question.")

    @model_validator(mode="after")
    def _one_length(self) -> Self:
        if self.steps is not None and self.fraction is not None:
            raise ValueError("a stage takes steps or fraction, not both: remove one")
        return self


@dataclass(frozen=True)
class StagePlan:
    """A stage resolved to a half-open step range ``[start, end)``."""

    start: int
    end: int
    stage: Stage


class CurriculumSettings(_Strict):
    """Schedules: ``none`` samples the dataset uniformly; ``staged`` walks through the run's
    ``stages`` (default: easy with the stage-1 suffix, medium, hard, in thirds); ``mixed``
    samples levels by ``mix``; ``rescored`` is mixed with levels re-derived from the policy's
    own results every ``rescore_every`` steps. Pacing ``linear`` moves the level weights from
    easy-only at the first step to ``mix`` at the last (mix {hard: 1}: an easy-to-hard ramp)."""

    schedule: Literal["none", "staged", "mixed", "rescored"] = Field(
        "none", description="How samples are chosen over the run (see above)."
    )
    mix: dict[Level, Annotated[float, Field(ge=0)]] = Field(
        default_factory=lambda: {"easy": 1.0, "medium": 1.0, "hard": 1.0},
        description="Level -> sampling weight (>= 0) for mixed and rescored; need not sum to 1.",
    )
    pacing: Literal["constant", "linear"] = Field(
        "constant", description="constant: `mix` throughout; linear: a ramp from easy to `mix`."
    )
    rescore_every: int | None = Field(
        None, ge=1, description="Steps between rescorings; required for schedule: rescored."
    )
    judge_method: Literal["pass_rate"] = Field(
        "pass_rate", description="Rescoring: the group's accuracy maps to a level (0: hard)."
    )

    @model_validator(mode="after")
    def _consistent(self) -> Self:
        if self.schedule == "rescored" and self.rescore_every is None:
            raise ValueError(
                "curriculum.schedule='rescored' needs curriculum.rescore_every: set it to the "
                "steps between rescorings (e.g. 10)"
            )
        if self.schedule in ("mixed", "rescored") and not any(self.mix.values()):
            raise ValueError(
                "curriculum.mix weights are all 0: give at least one level a positive weight "
                "(e.g. mix: {easy: 1, medium: 1, hard: 1})"
            )
        return self


class RolloutSettings(_Strict):
    """Maps onto the queue's ``QueueConfig`` (``magsrl.trainer.queue_common``)."""

    job_timeout_s: float = Field(
        300.0, gt=0, description="A delivered job idle this long is reclaimed (XAUTOCLAIM)."
    )
    max_deliveries: int = Field(
        3, ge=1, description="K: after K deliveries without completing, a job is dead-lettered."
    )
    queue_maxlen: int = Field(
        100_000, ge=1, description="Safety cap: XADD MAXLEN ~ trims the oldest jobs beyond it."
    )
    max_lag: int | None = Field(
        4096, ge=1, description="Backpressure: most outstanding jobs (null: off); < queue_maxlen."
    )

    @model_validator(mode="after")
    def _consistent(self) -> Self:
        if self.max_lag is not None and self.max_lag >= self.queue_maxlen:
            raise ValueError(
                f"rollout.max_lag={self.max_lag} must be below rollout.queue_maxlen="
                f"{self.queue_maxlen}, or MAXLEN trims jobs no worker finished; lower max_lag"
            )
        return self


class ValidationSettings(_Strict):
    """A held-out set scored during training: every ``every`` steps, each sample once with
    zoom and once without (greedy), through the same rollout workers; never trained on."""

    every: int = Field(0, ge=0, description="Steps between validations; 0 is off.")
    dataset: str | None = Field(
        None, min_length=1, description="Validation file (path); unset: hold out from dataset."
    )
    dataset_kind: str = Field("auto", pattern=r"^[a-z0-9_.-]+$", description="Its loader.")
    max_samples: int = Field(
        16, ge=1, le=4096, description="Samples scored (held out: the dataset's last N)."
    )
    temperature: float = Field(0.0, ge=0, le=2, description="Sampling temperature (0: greedy).")


class RunEpisode(EpisodeOptions):
    """The run's ``episode`` section: ``EpisodeOptions`` as they are, strict about typos.
    In a run, ``grpo`` owns max_rounds and the sampling fields and the stages own zoom; the
    run config copies them in, and refuses a different value written here."""

    model_config = ConfigDict(extra="forbid", hide_input_in_errors=True)

    @model_validator(mode="before")
    @classmethod
    def _known_keys(cls, data: Any) -> Any:
        return check_unknown_keys(cls, data)


# episode field -> the grpo field that owns it in a run config
_GRPO_OWNED = {
    "max_rounds": "max_rounds",
    "temperature": "temperature",
    "top_p": "top_p",
    "max_tokens": "max_new_tokens",
}
# Keys from before the episode section, still read: old key -> (section or None, episode key)
_LEGACY_KEYS = {"zoom_protocol": (None, "protocol"), "upscale": ("rollout", "upscale")}


class LearnerSettings(_Strict):
    """Where the learner runs: in the trainer's process (1 x 1, the default), or as a torchrun
    group of FSDP2 ranks the trainer drives (``magsrl.trainer.learner_group``)."""

    nproc_per_node: int = Field(
        1, ge=1, le=64, description="Learner ranks per node (GPUs); 1 x 1 runs in-process."
    )
    nnodes: int = Field(1, ge=1, le=1024, description="Nodes of learner ranks.")
    rendezvous_endpoint: str | None = Field(
        None,
        pattern=r"^[A-Za-z0-9._-]+:[0-9]{1,5}$",
        description="host:port of this (node-rank 0) node, reachable from the others; nnodes > 1.",
    )

    @model_validator(mode="after")
    def _consistent(self) -> Self:
        if self.nnodes > 1 and self.rendezvous_endpoint is None:
            raise ValueError(
                f"learner.nnodes={self.nnodes} needs learner.rendezvous_endpoint: this node's "
                "address and a free port the other nodes can reach (e.g. 10.0.0.1:29500)"
            )
        if self.nnodes == 1 and self.rendezvous_endpoint is not None:
            raise ValueError(
                "learner.rendezvous_endpoint is only for nnodes > 1 (one node rendezvouses "
                "locally); remove it or raise learner.nnodes"
            )
        return self

    @property
    def world_size(self) -> int:
        return self.nproc_per_node * self.nnodes


class RunConfig(_Strict):
    """A training run. Only ``name``, ``model`` and ``dataset`` are required."""

    name: str = Field(
        json_schema_extra={"pattern": NAME_PATTERN}, description="Slug; adapters: <name>-v<n>."
    )
    model: str = Field(min_length=1, description="Hugging Face id, local path, or tiny.")
    dataset: str = Field(min_length=1, description="Dataset or curriculum file (path).")
    dataset_kind: str = Field(
        "auto", pattern=r"^[a-z0-9_.-]+$", description="Loader name; auto: by file name/contents."
    )
    max_samples: int | None = Field(
        None, ge=1, description="Use only the first N samples (a 40-sample run is a recipe)."
    )
    steps: int = Field(100, ge=1, description="Optimizer steps.")
    seed: int = Field(0, ge=0, description="Seeds sampling, data order and initialisation.")
    output_dir: str | None = Field(
        None, description="Run folder name under the trainer's runs directory (not a path)."
    )
    episode: RunEpisode = Field(
        default_factory=lambda: RunEpisode(protocol="tags"),
        description="How each rollout's zoom episode runs (the options /answer takes). Crop "
        "fields left unset take what the policy serves; zoom comes from the stages and "
        "max_rounds and sampling from grpo.",
    )
    grpo: GRPOSettings = Field(default_factory=GRPOSettings, description="GRPO hyperparameters.")
    rewards: RewardWeights = Field(default_factory=RewardWeights, description="Reward weights.")
    lora: LoraSettings = Field(default_factory=LoraSettings, description="LoRA or full FT.")
    stages: list[Stage] = Field(
        default_factory=list, description="Stages in order; the last one runs to the end."
    )
    curriculum: CurriculumSettings = Field(
        default_factory=CurriculumSettings, description="Difficulty schedule."
    )
    rollout: RolloutSettings = Field(
        default_factory=RolloutSettings, description="Rollout queue and workers."
    )
    validation: ValidationSettings = Field(
        default_factory=ValidationSettings, description="Held-out accuracy during training."
    )
    learner: LearnerSettings = Field(
        default_factory=LearnerSettings, description="Learner processes (FSDP2 under torchrun)."
    )
    async_steps: int = Field(
        0,
        ge=0,
        le=MAX_ASYNC_STEPS,
        description="One-step-off training: the jobs of the next async_steps steps are queued "
        "before the learner step, so rollout and learning overlap; results up to async_steps "
        "versions old are trained on with the importance weights (grpo.tis_cap), older ones "
        "are re-queued. 0: synchronous.",
    )

    @field_validator("name")
    @classmethod
    def _slug(cls, name: str) -> str:
        if not re.fullmatch(NAME_PATTERN, name):
            raise ValueError(
                f"name {name!r} is not a slug: use 1-48 lowercase letters, digits, '-' or '_', "
                "starting with a letter or digit (e.g. 'vstar-lora-1')"
            )
        return name

    @model_validator(mode="before")
    @classmethod
    def _legacy_keys(cls, data: Any) -> Any:
        """``zoom_protocol`` and ``rollout.upscale`` (before the episode section) are moved
        into ``episode``; giving both spellings with different values is refused."""
        if not isinstance(data, dict):
            return data
        data = dict(data)
        episode = dict(data.get("episode") or {})
        for old, (section, new) in _LEGACY_KEYS.items():
            holder = data if section is None else data.get(section)
            if not isinstance(holder, dict) or old not in holder:
                continue
            if section is not None:
                holder = data[section] = dict(holder)
            value = holder.pop(old)
            if new in episode and episode[new] != value:
                where = old if section is None else f"{section}.{old}"
                raise ValueError(
                    f"{where}={value!r} and episode.{new}={episode[new]!r} disagree: "
                    f"{where} is the old spelling of episode.{new}; keep only episode.{new}"
                )
            episode[new] = value
        if episode or "episode" in data:
            data["episode"] = episode
        return data

    @property
    def zoom_protocol(self) -> Protocol:
        """The old name of ``episode.protocol``."""
        return self.episode.protocol or "tags"

    @model_validator(mode="after")
    def _consistent(self) -> Self:
        self._sync_episode()
        self._check_stages()
        if self.async_steps and self.grpo.tis_cap is None and self.grpo.seq_mask_threshold is None:
            raise ValueError(
                f"async_steps={self.async_steps} trains on results from an older policy "
                "version, which only the importance weights correct, and grpo.tis_cap and "
                "grpo.seq_mask_threshold are both off: set grpo.tis_cap (2 is verl's default), "
                "or async_steps: 0"
            )
        if self.async_steps and not self.lora.enabled:
            raise ValueError(
                f"async_steps={self.async_steps} keeps the version the queued jobs name loaded "
                "next to the newest, and a full fine-tuning policy serves one version at a "
                "time: use LoRA (lora.enabled: true), or async_steps: 0"
            )
        n = self.sequences_per_step * (1 + self.async_steps)  # queued ahead: async_steps more
        if self.rollout.queue_maxlen < n:
            raise ValueError(
                f"rollout.queue_maxlen={self.rollout.queue_maxlen} is below the {n} jobs "
                f"{1 + self.async_steps} step(s) queue at once (async_steps={self.async_steps}): "
                "raise it"
            )
        return self

    def _sync_episode(self) -> None:
        """grpo owns max_rounds and sampling, the stages own zoom: copy them into the
        episode, refusing a different value written there."""
        episode = self.episode
        for name, owner in _GRPO_OWNED.items():
            value = getattr(self.grpo, owner)
            if name in episode.model_fields_set and getattr(episode, name) != value:
                raise ValueError(
                    f"episode.{name}={getattr(episode, name)!r} differs from grpo.{owner}="
                    f"{value!r}: in a run, grpo.{owner} sets it; remove episode.{name}"
                )
        if episode.zoom != "auto":
            raise ValueError(
                f"episode.zoom={episode.zoom!r}: in a run the stages set the zoom mode; "
                "use stages: [{zoom: force}] and remove episode.zoom"
            )
        if episode.seed is not None:
            raise ValueError(
                "episode.seed: each rollout's seed derives from the run's seed; set seed "
                "instead and remove episode.seed"
            )
        if episode.protocol is None:
            # The run trains one protocol (its format reward checks it): never the policy's.
            episode.protocol = "tags"
        update = {name: getattr(self.grpo, owner) for name, owner in _GRPO_OWNED.items()}
        self.episode = episode.model_copy(update=update)

    def job_options(self, zoom: StageZoom, seed: int) -> EpisodeOptions:
        """The episode options of one rollout job: the run's, with the stage's zoom mode
        and the job's seed."""
        return EpisodeOptions.model_validate(
            {**self.episode.model_dump(), "zoom": zoom, "seed": seed}
        )

    def _check_stages(self) -> None:
        for i, stage in enumerate(self.stages):
            if stage.levels is not None and self.curriculum.schedule != "staged":
                raise ValueError(
                    f"stages[{i}].levels needs curriculum.schedule: staged (it is "
                    f"{self.curriculum.schedule!r}); set the schedule or remove the levels"
                )
            if stage.steps is None and stage.fraction is None and i != len(self.stages) - 1:
                raise ValueError(
                    f"stages[{i}] has neither steps nor fraction: only the last stage may "
                    "omit them (it then runs to the end); give it steps or fraction"
                )
        used = sum(self._stage_length(s) for s in self.stages)
        if used > self.steps:
            raise ValueError(
                f"stages use {used} steps but the run has steps={self.steps}: shorten the "
                f"stages or raise steps to {used}"
            )

    def _stage_length(self, stage: Stage) -> int:
        if stage.steps is not None:
            return stage.steps
        if stage.fraction is not None:
            # floor, so fractions meant to add up to the run (0.5 + 0.5) never overshoot it
            return max(1, math.floor(stage.fraction * self.steps + 1e-9))
        return 0  # the open last stage: whatever remains

    def stage_plan(self) -> list[StagePlan]:
        """The stages as step ranges covering ``[0, steps)``; the last one runs to the end.
        With schedule ``staged`` and no stages: easy, medium, hard in thirds."""
        stages = self.stages
        if not stages and self.curriculum.schedule == "staged":
            stages = [
                Stage(levels=["easy"], fraction=1 / 3, prompt_suffix="stage1"),
                Stage(levels=["medium"], fraction=1 / 3),
                Stage(levels=["hard"]),
            ]
        if not stages:
            stages = [Stage()]
        plan: list[StagePlan] = []
        start = 0
        for i, stage in enumerate(stages):
            last = i == len(stages) - 1
            end = self.steps if last else min(self.steps, start + self._stage_length(stage))
            plan.append(StagePlan(start=start, end=end, stage=stage))
            start = end
        return plan

    @property
    def sequences_per_step(self) -> int:
        """Rollouts (and rollout jobs) per optimizer step: prompts_per_step * group_size."""
        return self.grpo.sequences_per_step

    @property
    def max_completion_length(self) -> int:
        """Most model-generated tokens in one episode: max_new_tokens * max_rounds."""
        return self.grpo.max_new_tokens * self.grpo.max_rounds

    def loss_config(self) -> LossConfig:
        from magsrl.trainer.grpo import LossConfig  # lazy: keep torch out of config clients

        same = self.grpo.model_dump(
            include={
                "eps_low",
                "eps_high",
                "beta",
                "loss_aggregation",
                "clip_ratio_c",
                "tis_cap",
                "seq_mask_threshold",
            }
        )
        return LossConfig(**same, max_completion_length=self.max_completion_length)

    def job_weights(self) -> dict[str, float]:
        """The reward weights a rollout job carries: ``overlong`` only under grpo.overlong:
        penalty (mask and keep handle truncation in the learner, not in the reward)."""
        weights = self.rewards.weights()
        if self.grpo.overlong != "penalty":
            weights["overlong"] = 0.0
        return weights

    def caveats(self) -> list[str]:
        """Valid but costly or surprising choices, for the trainer to log with the run."""
        notes = []
        if self.grpo.beta > 0 and not self.lora.enabled:
            notes.append(
                "grpo.beta > 0 with full fine-tuning keeps a second, frozen copy of the model "
                "as the KL reference (with LoRA the reference is free)"
            )
        if self.grpo.top_p < 1:
            notes.append("grpo.top_p < 1: sampler and learner log-probs will differ")
        return notes

    @classmethod
    def from_yaml(cls, path: str | Path) -> RunConfig:
        """Reads and validates a YAML run config; raises ValueError (or ValidationError)."""
        data = yaml.safe_load(Path(path).read_text(encoding="utf-8"))
        if not isinstance(data, dict):
            raise ValueError(f"{path}: expected a YAML mapping of run settings")
        return cls.model_validate(data)

    def to_yaml(self) -> str:
        """The full config (defaults included) as YAML; ``from_yaml`` reads it back equal."""
        return yaml.safe_dump(self.model_dump(mode="json"), sort_keys=False, allow_unicode=True)
