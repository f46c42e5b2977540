"""The GRPO, rewards and optimiser sections of RunConfig added for issue 14: what reaches the
loss, the rollout jobs and the worker, and the fix-it refusals."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
from pydantic import ValidationError

from magsrl.proto.rollout import RewardOptions
from magsrl.trainer.run_config import RunConfig

EXAMPLE = Path(__file__).resolve().parents[1] / "examples" / "train-tiny.yaml"


def config(**sections: Any) -> RunConfig:
    return RunConfig.model_validate({"name": "r", "model": "tiny", "dataset": "d", **sections})


def test_defaults_turn_the_corrections_on() -> None:
    """Pins the correction shipped off: TIS 2, dual clip 3, dropout off in the learner."""
    run = config()
    loss = run.loss_config()
    assert (loss.tis_cap, loss.clip_ratio_c, loss.seq_mask_threshold) == (2.0, 3.0, None)
    assert run.grpo.disable_dropout and run.grpo.gradient_checkpointing == "auto"
    off = config(grpo={"tis_cap": None, "clip_ratio_c": None, "seq_mask_threshold": 1.001})
    assert off.loss_config().tis_cap is None and off.loss_config().seq_mask_threshold == 1.001


def test_overlong_weight_reaches_jobs_only_under_penalty() -> None:
    """Pins a truncated episode penalised twice (masked and penalised) or never."""
    assert config().job_weights()["overlong"] == 0.0
    assert config(grpo={"overlong": "penalty"}).job_weights()["overlong"] == 0.1
    assert config(grpo={"overlong": "mask"}).job_weights()["overlong"] == 0.0


def test_reward_options_travel_apart_from_weights() -> None:
    """Pins an option (a string) sent as a weight, which compute_reward would refuse."""
    run = config(rewards={"answer_slot": "free_text", "bad_box_cap": 2})
    assert "answer_slot" not in run.rewards.weights()
    assert run.rewards.options() == RewardOptions(answer_slot="free_text", bad_box_cap=2)


@pytest.mark.parametrize(
    ("sections", "message"),
    [
        pytest.param(
            {"rewards": {"format": 0.6, "zoom_validity": 0.5}}, "not below", id="penalties"
        ),
        pytest.param({"grpo": {"tis_cap": 0.5}}, "tis_cap", id="tis-cap"),
        pytest.param({"grpo": {"clip_ratio_c": 1.0}}, "clip_ratio_c", id="dual-clip"),
        pytest.param({"grpo": {"overlong": "drop"}}, "overlong", id="overlong"),
        pytest.param({"grpo": {"lr_schedule": "linear"}}, "lr_schedule", id="schedule"),
    ],
)
def test_inconsistent_values_are_refused(sections: dict[str, Any], message: str) -> None:
    """Pins a config that would silently mistrain accepted at submission."""
    with pytest.raises(ValidationError, match=message):
        config(**sections)


def test_the_example_shows_the_new_sections() -> None:
    """Pins examples/train-tiny.yaml drifting from the config it documents."""
    run = RunConfig.from_yaml(EXAMPLE)
    text = EXAMPLE.read_text()
    for key in ("tis_cap", "clip_ratio_c", "max_refills", "overlong", "warmup_steps", "validation"):
        assert key in text
    assert run.validation.every > 0
