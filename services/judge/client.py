"""The judge's client moved to ``magsrl.clients.judge`` (below every service, so ``data`` can
use it without importing the judge); this name stays for existing imports."""

from magsrl.clients.judge import DEFAULT_TIMEOUT_S, JudgeClient, JudgeError, JudgeUnavailable

__all__ = ["DEFAULT_TIMEOUT_S", "JudgeClient", "JudgeError", "JudgeUnavailable"]
