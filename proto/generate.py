"""Writes ``proto/schemas/*.json`` from the pydantic models. A test fails when they drift.

Run: ``python -m magsrl.proto.generate``
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from magsrl.proto.errors import ErrorResponse
from magsrl.proto.images import ImageInfo
from magsrl.proto.magnifier import ZoomRequest, ZoomResponse
from magsrl.proto.tools import zoom_tool

SCHEMA_DIR = Path(__file__).parent / "schemas"


def schemas() -> dict[str, dict[str, Any]]:
    return {
        "zoom_tool.json": zoom_tool(),
        "error.json": ErrorResponse.model_json_schema(),
        "magnifier.images.response.json": ImageInfo.model_json_schema(),
        "magnifier.zoom.request.json": ZoomRequest.model_json_schema(),
        "magnifier.zoom.response.json": ZoomResponse.model_json_schema(),
    }


def render(schema: dict[str, Any]) -> str:
    return json.dumps(schema, indent=2, sort_keys=True) + "\n"


def main() -> None:
    SCHEMA_DIR.mkdir(exist_ok=True)
    for name, schema in schemas().items():
        (SCHEMA_DIR / name).write_text(render(schema))
        print(f"wrote {SCHEMA_DIR / name}")


if __name__ == "__main__":
    main()
