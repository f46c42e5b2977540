"""The JSONL form of the one sample type (the generic format, and the curriculum file's rows).
The ``Sample`` wire model itself lives in ``magsrl.proto.sample``: it travels inside rollout
jobs."""

from __future__ import annotations

import json
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import Any

from pydantic import BaseModel

from magsrl.proto.sample import Sample, ScorerName

__all__ = ["Sample", "ScorerName", "read_jsonl", "resolve_image", "write_jsonl"]


def resolve_image(sample: Sample, base: Path) -> Sample:
    """The sample with its image path made absolute against ``base`` (URLs kept)."""
    if "://" in sample.image or Path(sample.image).is_absolute():
        return sample
    return sample.model_copy(update={"image": str((base / sample.image).resolve())})


def read_jsonl(path: Path) -> Iterator[dict[str, Any]]:
    """Rows of a JSONL file; a bad line raises ValueError naming the file and line."""
    with path.open(encoding="utf-8") as fh:
        for lineno, line in enumerate(fh, 1):
            if not line.strip():
                continue
            try:
                row = json.loads(line)
            except json.JSONDecodeError as exc:
                raise ValueError(f"{path}:{lineno}: not JSON ({exc.msg})") from exc
            if not isinstance(row, dict):
                raise ValueError(f"{path}:{lineno}: expected a JSON object per line")
            yield row


def write_jsonl(path: Path, rows: Iterable[BaseModel | dict[str, Any]]) -> int:
    """Writes rows (models or dicts) one per line; returns how many."""
    path.parent.mkdir(parents=True, exist_ok=True)
    count = 0
    with path.open("w", encoding="utf-8") as fh:
        for row in rows:
            data = row.model_dump(exclude_none=True) if isinstance(row, BaseModel) else row
            fh.write(json.dumps(data, ensure_ascii=False) + "\n")
            count += 1
    return count
