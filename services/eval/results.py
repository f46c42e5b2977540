"""The eval folder on disk: ``results.jsonl`` (append-only, one record per sample and arm,
so a cancelled run resumes where it stopped) and ``manifest.json`` (what the results are of,
so a resume with other settings is refused instead of mixing two experiments)."""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

from pydantic import ValidationError

from magsrl.eval.config import MANIFEST_FIELDS, SYNTHETIC, EvalConfig
from magsrl.proto.eval import EPISODE_KEYS, MANIFEST_FILE, RESULTS_FILE, EvalRecord
from magsrl.zoom.protocols import AUTO, resolve_protocol

# What the openai backend's episodes speak when the config names no protocol
# (magsrl.eval.backends.OpenAIBackend: ServedOptions(protocol=config.protocol or "tags")).
OPENAI_DEFAULT_PROTOCOL = "tags"
# A manifest from before the effective limit was recorded wrote EpisodeOptions' default
# (2) for an unset max_rounds, whatever the protocol; it resumes as "unset".
_LEGACY_UNSET = 2


def turn_limit(
    config: EvalConfig, served: str | None = None, model: str | None = None
) -> tuple[int | None, str]:
    """The turn limit an eval's episodes run under, and where it comes from: the config's
    ``max_rounds`` when set, else the protocol's own limit (the config's protocol, else the
    one the backend serves, ``served``; ``auto`` resolved by ``model``, as the policy
    resolves it). None when nobody says which protocol."""
    if "max_rounds" in config.episode.model_fields_set:
        return config.max_rounds, "max_rounds in the eval config"
    name = config.protocol
    if name is None:
        name = OPENAI_DEFAULT_PROTOCOL if config.backend == "openai" else served
    if name is None:
        return None, "the protocol the policy serves (it did not say which)"
    if name == AUTO and model is None:
        return None, "the protocol auto picks from the model's name"
    protocol = resolve_protocol(name, [model])
    where = "the eval config" if config.protocol is not None else "the policy's setting"
    return protocol.max_rounds, f"protocol {protocol.name}'s own turn limit ({where})"


class ResultsConflict(ValueError):
    """The folder holds results of a different experiment."""


def manifest_of(config: EvalConfig) -> dict[str, Any]:
    # The episode's fields count at the top level, as before the episode section.
    episode = config.episode.model_dump(mode="json", include=set(EPISODE_KEYS))
    data = {**config.model_dump(mode="json"), **episode}
    if config.dataset != SYNTHETIC:
        data["synthetic_size"] = None  # only shapes generated scenes
    # The limit the episodes run under, not EpisodeOptions' default: unset means the
    # protocol's own (None until the policy says which protocol it serves).
    data["max_rounds"], source = turn_limit(config)
    return {**{name: data[name] for name in MANIFEST_FIELDS}, "max_rounds_from": source}


def _same(name: str, saved: dict[str, Any], wanted: dict[str, Any]) -> bool:
    if saved.get(name) == wanted[name]:
        return True
    legacy = "max_rounds_from" not in saved and name == "max_rounds"
    return legacy and saved.get(name) == _LEGACY_UNSET and wanted[name] is None


def check_manifest(out: Path, config: EvalConfig, fresh: bool) -> None:
    """Writes the manifest, or checks the one there against ``config``. ``fresh`` starts
    over: the old results are moved aside (never deleted) as ``results.jsonl.old``."""
    out.mkdir(parents=True, exist_ok=True)
    path, results = out / MANIFEST_FILE, out / RESULTS_FILE
    wanted = manifest_of(config)
    if fresh and results.exists():
        results.replace(results.with_name(RESULTS_FILE + ".old"))
    elif path.exists():
        saved = json.loads(path.read_text())
        differ = [k for k in MANIFEST_FIELDS if not _same(k, saved, wanted)]
        if differ and results.exists():
            what = ", ".join(f"{k}: {saved.get(k)!r} there, {wanted[k]!r} now" for k in differ)
            raise ResultsConflict(
                f"{out} holds results of another eval ({what}); resume with the same "
                "settings, pick another --out, or pass --fresh to start over"
            )
    path.write_text(json.dumps(wanted, indent=2) + "\n")


class ResultsFile:
    """Append-only JSONL of ``EvalRecord``. Each record is one write of one line, flushed,
    so a kill leaves at most a torn last line, which ``load`` cuts off."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self._fh: Any = None

    def load(self) -> dict[str, EvalRecord]:
        """The records already there, by key (the last one wins on a repeat). A torn last
        line (a kill mid-write) is truncated away; a bad line elsewhere is an error, since
        it means the file was edited or is not a results file."""
        if not self.path.exists():
            return {}
        raw = self.path.read_bytes()
        complete, _, tail = raw.rpartition(b"\n")
        records: dict[str, EvalRecord] = {}
        for lineno, line in enumerate(complete.split(b"\n") if complete else [], 1):
            if line.strip():
                record = self._parse(line, lineno)
                records[record.key] = record
        if tail.strip():
            # No newline after it: the process died while writing this line.
            try:
                record = EvalRecord.model_validate_json(tail)
            except ValidationError:
                with self.path.open("r+b") as fh:
                    fh.truncate(len(raw) - len(tail))
            else:
                records[record.key] = record
                with self.path.open("ab") as fh:
                    fh.write(b"\n")
        return records

    def _parse(self, line: bytes, lineno: int) -> EvalRecord:
        try:
            return EvalRecord.model_validate_json(line)
        except ValidationError as exc:
            raise ValueError(
                f"{self.path}:{lineno}: not an eval record ({exc.errors()[0]['msg']}); "
                "fix or remove the line, or pass --fresh to start over"
            ) from exc

    def append(self, record: EvalRecord) -> None:
        if self._fh is None:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            self._fh = self.path.open("a", encoding="utf-8")
        self._fh.write(record.model_dump_json(exclude_none=True) + "\n")
        self._fh.flush()

    def close(self) -> None:
        if self._fh is not None:
            self._fh.flush()
            os.fsync(self._fh.fileno())
            self._fh.close()
            self._fh = None
