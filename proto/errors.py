"""The error envelope every service returns: ``{"error": {"type", "message", "param"?}}``."""

from __future__ import annotations

from pydantic import BaseModel, Field


class ErrorDetail(BaseModel):
    type: str = Field(description="A stable machine-readable category.")
    message: str = Field(description="What went wrong and what to change.")
    param: str | None = Field(None, description="The request field at fault, when there is one.")
    code: int | None = Field(None, description="The HTTP status, repeated for convenience.")
    request_id: str | None = Field(None, description="Quote this when reporting a problem.")


class ErrorResponse(BaseModel):
    error: ErrorDetail
