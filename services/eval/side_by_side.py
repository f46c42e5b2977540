"""Several policies on the same seeded samples, in one report: ``magsrl eval DATASET --policy
URL1 --policy URL2 [--protocol P1 --protocol P2]``. Each policy runs as its own eval (its
own results file under ``OUT/<label>/``, resumable as any eval), and the report treats
every (policy, arm) pair as an arm, so the comparisons are the same paired statistics as
the arms': bootstrap intervals of each accuracy and of each difference, and McNemar's test
on the discordant samples. The samples are the same for every policy, because the draw,
the option order and the seeds all come from ``--seed``.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from urllib.parse import urlsplit

from magsrl.proto.eval import ArmSpec, EvalRecord


@dataclass(frozen=True)
class Contender:
    """One policy in the comparison: its label (a folder name and the report's prefix),
    URL and protocol (None: the policy's own)."""

    label: str
    policy_url: str
    protocol: str | None


def contenders(urls: Sequence[str], protocols: Sequence[str]) -> list[Contender]:
    """One contender per URL; ``protocols`` is empty, one for all, or one per URL. Labels
    are ``host-port`` (with the protocol when given), numbered if two would clash."""
    if protocols and len(protocols) not in (1, len(urls)):
        raise ValueError(
            f"give --protocol once for every policy or once per --policy: {len(urls)} "
            f"policies, {len(protocols)} protocols"
        )
    per_url = list(protocols) * len(urls) if len(protocols) == 1 else list(protocols)
    out: list[Contender] = []
    seen: set[str] = set()
    for i, url in enumerate(urls):
        protocol = per_url[i] if per_url else None
        parts = urlsplit(url)
        label = (parts.hostname or f"policy{i + 1}") + (f"-{parts.port}" if parts.port else "")
        if protocol:
            label = f"{label}-{protocol}"
        if label in seen:
            label = f"{label}-{i + 1}"
        seen.add(label)
        out.append(Contender(label, url, protocol))
    return out


def relabel(
    label: str, arms: Sequence[ArmSpec], records: Iterable[EvalRecord]
) -> tuple[list[ArmSpec], list[EvalRecord]]:
    """One contender's arms and records under ``label/arm`` names, for a joint report."""
    named = [arm.model_copy(update={"name": f"{label}/{arm.name}"}) for arm in arms]
    renamed = [
        r.model_copy(update={"arm": f"{label}/{r.arm}", "key": f"{r.sample_id}|{label}/{r.arm}"})
        for r in records
    ]
    return named, renamed
