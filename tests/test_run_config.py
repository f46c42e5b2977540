"""The training-run config: the example loads, bad values are refused with a fix, YAML
round-trips."""

from __future__ import annotations

import copy
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
import yaml
from pydantic import BaseModel, ValidationError

from magsrl.trainer.run_config import RunConfig

EXAMPLE = Path(__file__).resolve().parents[1] / "examples" / "train-tiny.yaml"


def base() -> dict[str, Any]:
    """The example as a dict: each case below changes one thing in a known-good config."""
    return yaml.safe_load(EXAMPLE.read_text(encoding="utf-8"))


def test_tiny_example_validates() -> None:
    """Pins examples/train-tiny.yaml drifting from the config it documents."""
    cfg = RunConfig.from_yaml(EXAMPLE)
    assert cfg.model == "tiny" and cfg.steps == 8
    assert cfg.grpo.group_size == 4 and cfg.grpo.prompts_per_step == 4
    assert cfg.sequences_per_step == 16
    assert cfg.lora.enabled and cfg.lora.r == 8
    assert cfg.dataset == "data/synth-tiny/data.curriculum.jsonl"  # against the file's folder
    assert (EXAMPLE.parent / cfg.dataset).is_file()
    assert cfg.curriculum.schedule == "staged"
    assert [s.prompt_suffix for s in cfg.stages] == ["stage1", None]
    assert cfg.caveats() == []


def test_loss_config_carries_the_grpo_block() -> None:
    """Pins the learner's LossConfig losing the run's clip bounds or dr_grpo's constant."""
    data = base()
    data["grpo"].update(eps_low=0.1, eps_high=0.3, beta=0.02, loss_aggregation="dr_grpo")
    loss = RunConfig.model_validate(data).loss_config()
    assert (loss.eps_low, loss.eps_high, loss.beta) == (0.1, 0.3, 0.02)
    assert loss.loss_aggregation == "dr_grpo"
    assert loss.max_completion_length == 48 * 2  # max_new_tokens * max_rounds


def _set(path: str, value: Any) -> Callable[[dict[str, Any]], None]:
    def apply(data: dict[str, Any]) -> None:
        *parents, leaf = path.split(".")
        node = data
        for key in parents:
            node = node.setdefault(key, {})
        node[leaf] = value

    return apply


def _all(*changes: Callable[[dict[str, Any]], None]) -> Callable[[dict[str, Any]], None]:
    def apply(data: dict[str, Any]) -> None:
        for change in changes:
            change(data)

    return apply


INCONSISTENT = [
    pytest.param(
        _set("grpo.micro_batch_size", 3),
        ["grpo.micro_batch_size=3", "16 sequences per step", "one of [1, 2, 4, 8, 16]"],
        id="micro-batch-not-a-divisor",
    ),
    pytest.param(
        _set("grpo.group_size", 1),
        ["grpo.group_size=1", "std", "set grpo.group_size to 2 or more"],
        id="group-of-one-with-std",
    ),
    pytest.param(
        _set("grpo.eps_low", 0.0),
        ["grpo.eps_low=0.0", "(0, 1]", "set it to e.g. 0.2"],
        id="eps-low-zero",
    ),
    pytest.param(
        _set("grpo.eps_high", 1.5), ["grpo.eps_high=1.5", "(0, 1]"], id="eps-high-above-one"
    ),
    pytest.param(
        _set("curriculum.schedule", "rescored"),
        ["curriculum.rescore_every", "set it to the steps between rescorings"],
        id="rescored-without-interval",
    ),
    pytest.param(
        _set("stages", [{"steps": 5}, {"steps": 5}]),
        ["stages use 10 steps", "steps=8", "raise steps to 10"],
        id="stages-longer-than-run",
    ),
    pytest.param(
        _set("stages", [{"fraction": 0.75}, {"fraction": 0.5}]),
        ["stages use 10 steps", "shorten the stages"],
        id="stage-fractions-over-one",
    ),
    pytest.param(
        _all(
            _set("curriculum.schedule", "mixed"),
            _set("curriculum.mix", {"easy": 0, "medium": 0, "hard": 0}),
        ),
        ["curriculum.mix", "all 0", "positive weight"],
        id="mix-all-zero",
    ),
    pytest.param(
        _set("curriculum.mix", {"easy": -1}),
        ["curriculum.mix.easy", "greater than or equal to 0"],
        id="mix-negative",
    ),
    pytest.param(
        _all(
            _set("stages", [{"levels": ["hard"], "steps": 2}]),
            _set("curriculum.schedule", "none"),
        ),
        ["stages[0].levels", "curriculum.schedule: staged"],
        id="stage-levels-without-staged-schedule",
    ),
    pytest.param(
        _set("stages", [{"zoom": "force"}, {"steps": 2}]),
        ["stages[0]", "only the last stage may omit", "give it steps or fraction"],
        id="open-stage-not-last",
    ),
    pytest.param(
        _set("stages", [{"steps": 2, "fraction": 0.5}]),
        ["steps or fraction, not both"],
        id="stage-steps-and-fraction",
    ),
    pytest.param(
        _set("rewards", {"accuracy": 0, "format": 0, "zoom_validity": 0}),
        ["rewards are all 0", "set rewards.accuracy > 0"],
        id="rewards-all-zero",
    ),
    pytest.param(
        _set("rollout.max_lag", 1000),
        ["rollout.max_lag=1000", "queue_maxlen=1000", "lower max_lag"],
        id="lag-not-below-maxlen",
    ),
    pytest.param(
        _all(_set("rollout.queue_maxlen", 10), _set("rollout.max_lag", None)),
        ["rollout.queue_maxlen=10", "16 jobs"],
        id="maxlen-below-one-step",
    ),
    pytest.param(_set("name", "My Run"), ["not a slug", "'vstar-lora-1'"], id="name-not-slug"),
    pytest.param(
        _set("lora.target_modules", []), ["target_modules is empty", "all-linear"], id="no-modules"
    ),
    pytest.param(
        _set("grpo.scale_rewards", "batch"), ["scale_rewards", "'group' or 'none'"], id="bad-enum"
    ),
]


@pytest.mark.parametrize(("change", "expected"), INCONSISTENT)
def test_inconsistent_config_is_refused_with_a_fix(
    change: Callable[[dict[str, Any]], None], expected: list[str]
) -> None:
    """Pins a run that would crash (or silently mistrain) minutes in, instead of failing at
    submission with a message that names the field and says what to change."""
    data = base()
    change(data)
    with pytest.raises(ValidationError) as info:
        RunConfig.model_validate(data)
    message = str(info.value)
    for fragment in expected:
        assert fragment in message


@pytest.mark.parametrize(
    "path",
    [
        pytest.param("learning_rate", id="top-level-key-of-grpo"),
        pytest.param("grpo.learnig_rate", id="typo-in-grpo"),
        pytest.param("lora.rank", id="typo-in-lora"),
        pytest.param("rollout.workers", id="unknown-in-rollout"),
    ],
)
def test_unknown_keys_are_refused(path: str) -> None:
    """Pins a typo'd key silently running with the default value."""
    data = base()
    _set(path, 1e-4)(data)
    with pytest.raises(ValidationError, match="unknown key") as info:
        RunConfig.model_validate(data)
    assert path.split(".")[-1] in str(info.value)


def test_stages_with_unknown_level_are_refused() -> None:
    """Pins a level name outside the judge's easy/medium/hard reaching the sampler."""
    data = base()
    data["curriculum"] = {"schedule": "staged"}
    data["stages"] = [{"levels": ["trivial"]}]
    with pytest.raises(ValidationError, match=r"stages\.0\.levels\.0"):
        RunConfig.model_validate(data)


@pytest.mark.parametrize(
    "change",
    [
        pytest.param(lambda d: None, id="example"),
        pytest.param(
            _all(
                _set(
                    "curriculum", {"schedule": "rescored", "rescore_every": 2, "pacing": "linear"}
                ),
                _set("stages", [{"zoom": "force", "fraction": 0.25}, {"prompt_suffix": "stage1"}]),
                _set("lora.target_modules", ["q_proj", "v_proj"]),
                _set("rollout.max_lag", None),
            ),
            id="stages-rescored-modules",
        ),
    ],
)
def test_yaml_round_trip(change: Callable[[dict[str, Any]], None], tmp_path: Path) -> None:
    """Pins to_yaml writing something from_yaml refuses (a computed key, a non-JSON type) or
    reads back different: the saved config must reproduce the run."""
    data = base()
    change(data)
    cfg = RunConfig.model_validate(data)
    path = tmp_path / "run.yaml"
    path.write_text(cfg.to_yaml(), encoding="utf-8")
    assert RunConfig.from_yaml(path) == cfg
    assert RunConfig.model_validate_json(cfg.model_dump_json()) == cfg  # the POST /v1/runs body


def test_from_yaml_refuses_a_non_mapping(tmp_path: Path) -> None:
    """Pins a YAML list or scalar crashing with a TypeError instead of saying what is wrong."""
    path = tmp_path / "run.yaml"
    path.write_text("- name: x\n", encoding="utf-8")
    with pytest.raises(ValueError, match="expected a YAML mapping"):
        RunConfig.from_yaml(path)


def test_minimal_config_takes_documented_defaults() -> None:
    """Pins the required fields (name, model, dataset) and defaults that must validate alone."""
    cfg = RunConfig(name="r1", model="tiny", dataset="d.jsonl")
    assert cfg.grpo.loss_aggregation == "token" and cfg.grpo.scale_rewards == "group"
    assert cfg.lora.enabled and cfg.grpo.beta == 0
    with pytest.raises(ValidationError, match="dataset"):
        RunConfig.model_validate({"name": "r1", "model": "tiny"})


def test_kl_with_full_finetuning_is_allowed_with_a_caveat() -> None:
    """Pins beta > 0 without LoRA being refused (it is valid) or passing without saying that
    it costs a second copy of the model."""
    data = base()
    data["grpo"]["beta"] = 0.04
    data["lora"]["enabled"] = False
    cfg = RunConfig.model_validate(data)
    assert any("second" in note and "copy" in note for note in cfg.caveats())


def test_stage_plan_covers_the_run() -> None:
    """Pins stage ranges that leave gaps, overlap, or stop before the last step."""
    data = base()
    data["steps"] = 10
    data["curriculum"] = {"schedule": "staged"}
    data["stages"] = [{"levels": ["easy"], "fraction": 0.5}, {"levels": ["hard"], "steps": 2}]
    plan = RunConfig.model_validate(data).stage_plan()
    assert [(p.start, p.end) for p in plan] == [(0, 5), (5, 10)]  # the last runs to the end

    data["stages"] = []
    plan = RunConfig.model_validate(data).stage_plan()
    assert [(p.start, p.end, p.stage.levels) for p in plan] == [
        (0, 3, ["easy"]),
        (3, 6, ["medium"]),
        (6, 10, ["hard"]),
    ]
    assert plan[0].stage.prompt_suffix == "stage1"


def _undescribed(model: type[BaseModel], prefix: str = "") -> list[str]:
    missing = []
    for name, field in model.model_fields.items():
        if not field.description:
            missing.append(prefix + name)
        annotation = field.annotation
        if isinstance(annotation, type) and issubclass(annotation, BaseModel):
            missing += _undescribed(annotation, f"{prefix}{name}.")
    return missing


def test_every_field_has_help_text() -> None:
    """Pins a field added without a description (the OpenAPI docs and the CLI show them)."""
    assert _undescribed(RunConfig) == []
    RunConfig.model_json_schema()  # the schema the trainer's OpenAPI publishes must build


def test_config_module_does_not_import_torch() -> None:
    """Pins `magsrl train` (a client without the trainer extra) needing torch to validate."""
    code = (
        "import sys\n"
        "from magsrl.trainer.run_config import RunConfig\n"
        f"RunConfig.from_yaml({str(EXAMPLE)!r})\n"
        "assert 'torch' not in sys.modules, 'torch was imported'\n"
    )
    subprocess.run([sys.executable, "-c", code], check=True, timeout=60)


def test_example_is_not_mutated_by_validation() -> None:
    """Pins validators that mutate the caller's dict (the service keeps the submitted body)."""
    data = base()
    snapshot = copy.deepcopy(data)
    RunConfig.model_validate(data)
    assert data == snapshot


def test_token_fraction_needs_a_target_token() -> None:
    """Pins a token_fraction reward with nothing to count (every reward 0, a silent no-op run)
    accepted at submission instead of refused with the fix."""
    data = base()
    data["rewards"] = {"token_fraction": 1.0}
    with pytest.raises(ValidationError) as info:
        RunConfig.model_validate(data)
    assert "rewards.target_token" in str(info.value) and "set it" in str(info.value)


def test_token_fraction_alone_is_a_reward_signal() -> None:
    """Pins the debugging run (token_fraction as the only reward, the trainer's end-to-end
    test) refused as 'rewards are all 0' because of how the signal check reads the weights."""
    data = base()
    data["rewards"] = {"accuracy": 0, "format": 0, "zoom_validity": 0, "token_fraction": 1.0}
    data["rewards"]["target_token"] = "the"
    cfg = RunConfig.model_validate(data)
    assert cfg.rewards.target_token == "the"
    assert cfg.rewards.weights() == {
        "accuracy": 0.0,
        "format": 0.0,
        "zoom_validity": 0.0,
        "zoom_iou": 0.0,
        "tool_bonus": 0.0,
        "overlong": 0.1,
        "token_fraction": 1.0,
    }
    assert RunConfig.model_validate_json(cfg.model_dump_json()) == cfg


def test_target_token_alone_is_not_a_signal() -> None:
    """Pins a set target_token (a string, truthy) counting as a reward weight when every
    weight is 0."""
    data = base()
    data["rewards"] = {"accuracy": 0, "format": 0, "zoom_validity": 0, "target_token": "a"}
    with pytest.raises(ValidationError, match="rewards are all 0"):
        RunConfig.model_validate(data)
