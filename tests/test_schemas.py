"""The JSON Schemas in proto/schemas/ are generated from the pydantic models; this fails when
someone edits a model without regenerating (`make schemas`), or edits a schema by hand."""

from __future__ import annotations

import pytest

from magsrl.proto.generate import SCHEMA_DIR, render, schemas


@pytest.mark.parametrize("name", sorted(schemas()))
def test_schema_file_matches_models(name: str) -> None:
    path = SCHEMA_DIR / name
    assert path.exists(), f"{path} is missing; run `make schemas`"
    assert path.read_text() == render(schemas()[name]), (
        f"{path} drifted from the pydantic models; run `make schemas` and commit the result"
    )


def test_zoom_tool_is_an_openai_function() -> None:
    tool = schemas()["zoom_tool.json"]
    assert tool["type"] == "function"
    fn = tool["function"]
    assert fn["name"] == "zoom"
    params = fn["parameters"]
    assert params["type"] == "object"
    assert params["required"] == ["bbox_2d"]
    assert set(params["properties"]) == {"bbox_2d", "label", "img_idx"}
    assert params["additionalProperties"] is False
