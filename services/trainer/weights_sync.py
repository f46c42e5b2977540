"""Full fine-tuning's side of the policy: before a run is accepted, whether the policy can
load a whole model while serving (``GET /v1/weights``); during it, which folder each version
is published from and which older folders can go.

LoRA versions are small adapters the policy (or vLLM) loads next to the base model. A full
fine-tuning version is the whole model: the learner saves it as safetensors and the policy
replaces its weights with it (``POST /v1/weights``). The hf engine can; the openai engine
cannot, because the vLLM release magsrl pins offers weight updates only in its development
mode (docs/decisions.md), so such a run is refused when it is submitted, with the reason,
instead of failing at its first publish.
"""

from __future__ import annotations

import shutil
from pathlib import Path
from typing import Any

import httpx

from magsrl.clients.policy import PolicyClient, PolicyError
from magsrl.common.errors import BadRequest, ServiceUnavailable
from magsrl.trainer.config import TrainerSettings
from magsrl.trainer.run_config import RunConfig

VERSIONS = "adapters"  # run_dir/adapters/v<n>: LoRA adapters, or whole models (full FT)


def version_folder(run_dir: Path, version: int) -> Path:
    return run_dir / VERSIONS / f"v{version}"


def prune_versions(run_dir: Path, keep: int) -> None:
    """Deletes the version folders older than ``keep``: with full fine-tuning each one is a
    whole model (15 GB for a 7B in bf16). A resumed run saves its version again from the
    checkpoint, so nothing older is ever needed."""
    for folder in (run_dir / VERSIONS).glob("v*"):
        number = folder.name.removeprefix("v")
        if number.isdigit() and int(number) < keep:
            shutil.rmtree(folder, ignore_errors=True)


def full_finetune_refusal(status: dict[str, Any] | None, run_dir: Path) -> str | None:
    """Why a full fine-tuning run writing to ``run_dir`` cannot publish its versions to the
    policy that answered ``GET /v1/weights`` with ``status`` (None: it has no such route)."""
    if status is None:
        return (
            "the policy has no /v1/weights endpoint, so it cannot load full fine-tuning "
            "versions; update it, or train with LoRA (lora.enabled: true)"
        )
    if not status.get("reloadable"):
        reason = status.get("reason") or "its engine cannot load weights while serving"
        return f"full fine-tuning (lora.enabled: false) cannot publish to this policy: {reason}"
    roots = [Path(root) for root in status.get("roots") or []]
    resolved = run_dir.resolve()
    if not any(resolved == root or resolved.is_relative_to(root) for root in roots):
        return (
            f"the run would save its versions under {resolved}, outside the folders the policy "
            f"loads weights from ({', '.join(map(str, roots))}); give both services the same "
            "MAGSRL_RUNS_DIR, drop output_dir, or add the folder to the policy's "
            "MAGSRL_WEIGHTS_ROOTS"
        )
    return None


async def check_full_finetune(
    config: RunConfig, settings: TrainerSettings, http: httpx.AsyncClient
) -> None:
    """At submit: a full fine-tuning run the policy could not serve is refused now (400,
    or 503 while the policy is unreachable); LoRA runs pass without a call."""
    if config.lora.enabled:
        return
    api_key = settings.api_key.get_secret_value() if settings.api_key else None
    policy = PolicyClient(
        settings.policy_url, api_key=api_key, timeout_s=settings.policy_timeout_s, client=http
    )
    try:
        status = await policy.weights()
    except PolicyError as exc:
        raise ServiceUnavailable(
            f"a full fine-tuning run needs to know whether the policy can load weights, and "
            f"GET /v1/weights failed: {exc.message}; start the policy, then submit again"
        ) from exc
    run_dir = Path(config.output_dir) if config.output_dir else settings.runs_dir
    refusal = full_finetune_refusal(status.model_dump() if status else None, run_dir)
    if refusal is not None:
        raise BadRequest(refusal, param="lora.enabled")
