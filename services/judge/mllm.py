"""The Mags-RL rubric judge: asks any OpenAI-compatible chat endpoint (the policy, a larger
judge model, a hosted API) to rate the four factors and a zoom_score, as JSON.

k = 1 runs at temperature 0. k > 1 draws k samples in one request (``n``) at a set
temperature and takes the median. A reply that cannot be read is asked for once more,
with the reply and a reminder in the conversation.
"""

from __future__ import annotations

import hashlib
import statistics
from dataclasses import dataclass
from typing import Any

import httpx

from magsrl.common.errors import ServiceUnavailable, UpstreamError
from magsrl.common.images import decode_reduced, encode_image, to_b64, within_pixels
from magsrl.judge.rubric import RubricParseError, RubricReply, parse_rubric
from magsrl.proto.judge import Factors
from magsrl.proto.prompts import OPTION_LETTERS, load_prompt, option_texts, render_prompt

IMAGE_FORMAT = "jpeg"
IMAGE_QUALITY = 90


@dataclass(frozen=True)
class MLLMScore:
    score: float
    factors: Factors
    rationale: str
    samples: list[float]


def rubric_text(question: str, answer: str | None, options: list[str] | None) -> str:
    """The user text of the rubric prompt; the image goes before it."""
    shown = question
    if options:
        letters = zip(OPTION_LETTERS, option_texts(options), strict=False)
        shown += "\nOptions: " + "; ".join(f"({letter}) {text}" for letter, text in letters)
    reference = f"Reference answer: {answer}\n" if answer else ""
    return render_prompt("judge_rubric", question=shown, reference=reference)


def image_data_url(data: bytes, *, max_pixels: int, max_image_pixels: int) -> str:
    image, _ = decode_reduced(data, max_pixels=max_image_pixels, target=within_pixels(max_pixels))
    encoded = encode_image(image, IMAGE_FORMAT, IMAGE_QUALITY)
    return f"data:image/{IMAGE_FORMAT};base64,{to_b64(encoded)}"


def rubric_messages(
    image_url: str, question: str, answer: str | None, options: list[str] | None
) -> list[dict[str, Any]]:
    """The chat messages the judge sends (OpenAI format)."""
    return [
        {
            "role": "user",
            "content": [
                {"type": "image_url", "image_url": {"url": image_url}},
                {"type": "text", "text": rubric_text(question, answer, options)},
            ],
        }
    ]


def prompt_version() -> str:
    text = load_prompt("judge_rubric") + load_prompt("judge_retry")
    return hashlib.sha256(text.encode()).hexdigest()[:8]


class MLLMJudge:
    def __init__(
        self,
        http: httpx.AsyncClient,
        base_url: str,
        *,
        model: str | None,
        api_key: str | None,
        samples: int,
        temperature: float,
        max_tokens: int,
        timeout_s: float,
    ) -> None:
        self.http = http
        self.base_url = base_url
        self.model = model
        self.headers = {"Authorization": f"Bearer {api_key}"} if api_key else {}
        self.samples = samples
        self.temperature = temperature if samples > 1 else 0.0
        self.max_tokens = max_tokens
        self.timeout_s = timeout_s

    async def _post(self, path: str, body: dict[str, Any] | None = None) -> dict[str, Any]:
        url = f"{self.base_url}{path}"
        try:
            if body is None:
                resp = await self.http.get(url, headers=self.headers, timeout=self.timeout_s)
            else:
                resp = await self.http.post(
                    url, json=body, headers=self.headers, timeout=self.timeout_s
                )
        except httpx.HTTPError as exc:
            raise ServiceUnavailable(
                f"the mllm judge endpoint {self.base_url} is unreachable ({exc}); start it or "
                "set MAGSRL_JUDGE_MLLM_URL"
            ) from exc
        if resp.status_code >= 500 or resp.status_code in (401, 403, 404):
            raise ServiceUnavailable(
                f"the mllm judge endpoint {url} answered {resp.status_code}: {resp.text[:200]}"
            )
        if resp.status_code >= 400:
            raise UpstreamError(
                f"the mllm judge endpoint refused the request ({resp.status_code}): "
                f"{resp.text[:300]}"
            )
        return resp.json()

    async def model_name(self) -> str:
        if self.model is None:
            listing = await self._post("/models")
            models = listing.get("data") or []
            if not models:
                raise ServiceUnavailable(f"{self.base_url}/models lists no model")
            self.model = str(models[0]["id"])
        return self.model

    async def version(self) -> str:
        return f"mllm-{await self.model_name()}-k{self.samples}-{prompt_version()}"

    async def _complete(self, messages: list[dict[str, Any]], n: int) -> list[str]:
        body = {
            "model": await self.model_name(),
            "messages": messages,
            "temperature": self.temperature if n > 1 else 0.0,
            "max_tokens": self.max_tokens,
            "n": n,
            "seed": 0,
        }
        reply = await self._post("/chat/completions", body)
        return [(choice["message"].get("content") or "") for choice in reply["choices"]]

    async def _retry(self, messages: list[dict[str, Any]], text: str) -> RubricReply:
        again = [
            *messages,
            {"role": "assistant", "content": text},
            {"role": "user", "content": render_prompt("judge_retry")},
        ]
        retry_text = (await self._complete(again, 1))[0]
        try:
            return parse_rubric(retry_text)
        except RubricParseError as exc:
            raise UpstreamError(f"the judge model's reply was unreadable twice: {exc}") from exc

    async def score(
        self,
        data: bytes,
        question: str,
        answer: str | None,
        options: list[str] | None,
        *,
        image_pixels: int,
        max_image_pixels: int,
    ) -> MLLMScore:
        url = image_data_url(data, max_pixels=image_pixels, max_image_pixels=max_image_pixels)
        messages = rubric_messages(url, question, answer, options)
        replies: list[RubricReply] = []
        for text in await self._complete(messages, self.samples):
            try:
                replies.append(parse_rubric(text))
            except RubricParseError:
                replies.append(await self._retry(messages, text))
        scores = [r.zoom_score for r in replies]
        median = statistics.median(scores)
        # The factors and rationale of the sample closest to the median explain it best.
        closest = min(replies, key=lambda r: abs(r.zoom_score - median))
        return MLLMScore(median, closest.factors, closest.rationale, scores)
