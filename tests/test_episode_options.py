"""The one options model of an episode (``magsrl.proto.episode``) and its vocabularies
(``magsrl.proto.vocab``): embedded as they are in /answer's body, the rollout job, the run
config and the eval config, with the older field names still read."""

from __future__ import annotations

import re
from pathlib import Path

import pytest
from pydantic import ValidationError

from magsrl.proto.episode import EpisodeOptions, ServedOptions
from magsrl.proto.eval import ArmSpec, EvalConfig
from magsrl.proto.policy import AnswerRequest
from magsrl.proto.rollout import RolloutJob
from magsrl.trainer.run_config import RunConfig

ROOT = Path(__file__).resolve().parents[1]


def test_answer_request_keeps_its_top_level_names() -> None:
    """Pins the public /answer contract: zoom, upscale, max_rounds and sampling stay
    top-level fields, and they are the episode's."""
    req = AnswerRequest.model_validate(
        {
            "image": {"b64": "AA=="},
            "question": "q",
            "zoom": "off",
            "upscale": "crop",
            "max_rounds": "3",  # multipart sends strings
            "temperature": 0.5,
            "max_tokens": 9,
            "seed": 1,
        }
    )
    opts = req.episode_options()
    assert (opts.zoom, opts.upscale, opts.max_rounds, opts.max_tokens) == ("off", "crop", 3, 9)
    assert opts.protocol is None and opts.crop_in is None  # the policy's


@pytest.mark.parametrize(
    "model", [AnswerRequest, RolloutJob], ids=["answer-request", "rollout-job"]
)
def test_wire_models_embed_every_episode_field(model: type) -> None:
    """Pins an episode field added in one place and forgotten in another."""
    assert set(EpisodeOptions.model_fields) <= set(model.model_fields)
    assert issubclass(model, EpisodeOptions)


def test_resolve_fills_only_unset_fields() -> None:
    """Pins a request's own crop setting being overwritten by the policy's."""
    served = ServedOptions(crop_in="user", crop_max_pixels=90_000, protocol="tools")
    got = EpisodeOptions(crop_max_pixels=70_000).resolve(served)
    assert (got.crop_in, got.crop_max_pixels, got.protocol) == ("user", 70_000, "tools")
    assert got.served().crop_in == "user"
    with pytest.raises(ValueError, match="not resolved"):
        EpisodeOptions().served()


def run_config(**fields: object) -> RunConfig:
    return RunConfig.model_validate({"name": "r", "model": "tiny", "dataset": "d", **fields})


def test_run_config_reads_the_old_keys_into_the_episode() -> None:
    """Pins existing yaml files: zoom_protocol and rollout.upscale still work."""
    config = run_config(zoom_protocol="tools", rollout={"upscale": "bicubic", "max_lag": 10})
    assert (config.episode.protocol, config.episode.upscale) == ("tools", "bicubic")
    assert config.zoom_protocol == "tools" and config.rollout.max_lag == 10
    again = RunConfig.model_validate_json(config.model_dump_json())
    assert again == config


def test_run_config_refuses_two_spellings_that_disagree() -> None:
    """Pins a silent choice between zoom_protocol and episode.protocol."""
    with pytest.raises(ValidationError, match=r"keep only episode\.protocol"):
        run_config(zoom_protocol="tools", episode={"protocol": "tags"})


def test_run_config_episode_sampling_belongs_to_grpo() -> None:
    """Pins two sources for one number: grpo.max_rounds and sampling fill the episode, and a
    different value written in the episode is refused with the fix."""
    config = run_config(grpo={"max_rounds": 3, "temperature": 0.9, "max_new_tokens": 64})
    assert (config.episode.max_rounds, config.episode.temperature) == (3, 0.9)
    assert config.episode.max_tokens == 64
    with pytest.raises(ValidationError, match=r"grpo\.max_rounds sets it"):
        run_config(episode={"max_rounds": 4})
    with pytest.raises(ValidationError, match="stages set the zoom mode"):
        run_config(episode={"zoom": "force"})


def test_job_options_carry_the_runs_crop_settings() -> None:
    """Pins crop settings written in a run config not reaching the job."""
    config = run_config(episode={"crop_in": "user", "crop_max_pixels": 80_000})
    opts = config.job_options("force", seed=7)
    assert (opts.zoom, opts.seed, opts.crop_in, opts.crop_max_pixels) == (
        "force",
        7,
        "user",
        80_000,
    )
    assert opts.crop_format is None  # the policy's


def test_eval_config_takes_flat_episode_keys(tmp_path: Path) -> None:
    """Pins the eval CLI's keyword names (protocol, max_rounds, ...) after the episode
    section was embedded."""
    config = EvalConfig(
        dataset="d",
        arms=[ArmSpec(name="zoom-sr", zoom="auto", upscale="sr")],
        out=tmp_path,
        protocol="tools",
        max_rounds=3,
        temperature=0.2,
        crop_in="user",
    )  # type: ignore[call-arg]
    assert (config.protocol, config.max_rounds, config.temperature) == ("tools", 3, 0.2)
    assert config.episode.crop_in == "user"


# Each vocabulary's words in a row, as an inline Literal or tuple would spell them.
_INLINE = [r'"auto",\s*"off"', r'"sr",\s*"bicubic"', r'"tags",\s*"tools"', r'"tool",\s*"user"']


def test_each_vocabulary_is_declared_once() -> None:
    """Pins the vocabularies copied inline (18 copies in 11 files before proto/vocab.py)."""
    found = []
    for folder in ("services", "proto"):
        for path in (ROOT / folder).rglob("*.py"):
            text = path.read_text(encoding="utf-8")
            for pattern in _INLINE:
                if re.search(pattern, text) and path.name != "vocab.py":
                    found.append(f"{path.relative_to(ROOT)}: {pattern}")
    assert found == []


def test_family_from_a_card_never_from_the_name(tmp_path: Path, monkeypatch) -> None:  # type: ignore[no-untyped-def]
    """Pins the name guess ("qwen3" in the id): the family comes from the card's extension,
    else config.json of its root (a folder, or a Hub id in the local cache), else the
    setting, else a refusal that says how to fix it."""
    from magsrl.engines.openai_upstream import family_from_card

    repo = tmp_path / "hub" / "models--acme--qwen3-looking-name"
    (repo / "refs").mkdir(parents=True)
    (repo / "refs" / "main").write_text("abc")
    (repo / "snapshots" / "abc").mkdir(parents=True)
    (repo / "snapshots" / "abc" / "config.json").write_text('{"model_type": "qwen2_5_vl"}')
    monkeypatch.setenv("HF_HUB_CACHE", str(tmp_path / "hub"))
    assert family_from_card({"id": "x", "family": "qwen3_vl"}, None).name == "qwen3_vl"
    card = {"id": "acme/qwen3-looking-name", "root": "acme/qwen3-looking-name"}
    assert family_from_card(card, None).name == "qwen2_5_vl"
    assert family_from_card({"id": "qwen3", "root": "qwen3"}, "qwen2_5_vl").name == "qwen2_5_vl"
    with pytest.raises(ValueError, match="MAGSRL_POLICY_FAMILY"):
        family_from_card({"id": "Qwen/Qwen3-VL-8B", "root": "Qwen/Qwen3-VL-8B"}, None)
