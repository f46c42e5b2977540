"""Which log-probs an OpenAI-compatible upstream reports, measured rather than assumed.

vLLM reports the log-softmax of the raw logits by default (``--logprobs-mode raw_logprobs``)
and, with ``processed_logprobs``, of the distribution it sampled from: after penalties,
temperature and top-k/top-p (vllm/v1/sample/sampler.py, ``Sampler``). The learner scores
``log_softmax(logits / T)``, so the sampler's numbers only mean the same at T = 1 unless
the upstream runs ``processed_logprobs``. vLLM serves its settings on no production
endpoint (``/server_info`` is a dev-mode route), so the mode is read off two one-token
requests: the gap between the two most likely tokens of the first step is ``z1 - z2`` in
raw mode at every temperature, and ``(z1 - z2) / T`` in processed mode.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import Any, Literal

LogprobsMode = Literal["processed_logprobs", "raw_logprobs"]
PROBE_TEMPERATURE = 0.25  # processed gaps grow 4x against T=1; raw ones stay put
GAP_RATIO_SPLIT = 2.0  # the geometric middle of 1 (raw) and 4 (processed)
MIN_GAP = 1e-4  # two tokens tied at the top tell nothing


def _top_gap(body: dict[str, Any]) -> float | None:
    try:
        tops = body["choices"][0]["logprobs"]["content"][0]["top_logprobs"]
        values = sorted((float(t["logprob"]) for t in tops), reverse=True)
    except (KeyError, IndexError, TypeError, ValueError):
        return None
    return values[0] - values[1] if len(values) >= 2 else None


async def observed_mode(
    post: Callable[[dict[str, Any]], Awaitable[dict[str, Any] | None]], model: str
) -> tuple[LogprobsMode | None, str]:
    """The mode the upstream behaves in (None when the probe cannot tell), and why."""
    gaps = []
    for temperature in (1.0, PROBE_TEMPERATURE):
        body = await post(
            {
                "model": model,
                "messages": [{"role": "user", "content": "Say one word."}],
                "max_tokens": 1,
                "temperature": temperature,
                "logprobs": True,
                "top_logprobs": 5,
                "seed": 0,
            }
        )
        gap = _top_gap(body) if body is not None else None
        if gap is None:
            return None, "the upstream returned no top log-probs to measure"
        gaps.append(gap)
    if gaps[0] < MIN_GAP:
        return None, "the two most likely tokens tie"
    ratio = gaps[1] / gaps[0]
    mode: LogprobsMode = "processed_logprobs" if ratio > GAP_RATIO_SPLIT else "raw_logprobs"
    return mode, f"top-2 log-prob gap x{ratio:.2f} at T={PROBE_TEMPERATURE} against T=1"
