"""The judge that tracks what the policy finds hard: 1 - its success rate over k attempts at
the sample itself, through the policy's ``/answer`` at a sampling temperature, marked by the
dataset's scorer. A sample the policy always gets right scores 1; never, 10."""

from __future__ import annotations

import asyncio
from dataclasses import dataclass

import httpx
from pydantic import ValidationError

from magsrl.clients.policy import PolicyAuthError, PolicyClient, PolicyError, PolicyUnavailable
from magsrl.common.errors import BadRequest, ServiceUnavailable, validation_message
from magsrl.data.sample import Sample
from magsrl.data.scorers import score as score_reply
from magsrl.proto.images import ImageRef
from magsrl.proto.judge import MAX_SCORE, MIN_SCORE, ScorerName
from magsrl.proto.policy import AnswerRequest

VERSION = "pass_rate-1"


@dataclass(frozen=True)
class PassRate:
    score: float
    successes: list[float]
    rationale: str


def score_from_rate(rate: float) -> float:
    return MIN_SCORE + (MAX_SCORE - MIN_SCORE) * (1.0 - rate)


class PassRateJudge:
    def __init__(
        self,
        http: httpx.AsyncClient,
        policy_url: str,
        *,
        api_key: str | None,
        samples: int,
        temperature: float,
        max_tokens: int | None,
        timeout_s: float,
    ) -> None:
        self.policy_url = policy_url
        self.policy = PolicyClient(policy_url, api_key=api_key, timeout_s=timeout_s, client=http)
        self.samples = samples
        self.temperature = temperature
        self.max_tokens = max_tokens
        self.timeout_s = timeout_s

    def version(self, policy_model: str | None) -> str:
        return f"{VERSION}-{policy_model or 'base'}-k{self.samples}"

    async def _attempt(self, request: AnswerRequest) -> str:
        try:
            return (await self.policy.answer(request)).answer
        except (PolicyUnavailable, PolicyAuthError) as exc:
            raise ServiceUnavailable(
                f"pass_rate needs the policy at {self.policy_url}: {exc}"
            ) from exc
        except PolicyError as exc:
            raise BadRequest(
                f"the policy refused the sample: {exc.message}", param=exc.param
            ) from exc

    async def score(
        self,
        image_b64: str,
        question: str,
        answer: str | None,
        options: list[str] | None,
        scorer: ScorerName | None,
        policy_model: str | None,
    ) -> PassRate:
        if answer is None:
            raise BadRequest(
                "pass_rate needs the sample's reference 'answer' to mark the policy's attempts",
                param="answer",
            )
        sample = Sample(
            id="judge",
            image="inline",
            question=question,
            answer=answer,
            options=options,
            scorer=scorer or ("mc" if options else "text"),
        )
        try:
            request = AnswerRequest(
                image=ImageRef(b64=image_b64),
                question=question,
                options=options,
                temperature=self.temperature,
                max_tokens=self.max_tokens,
                model=policy_model,
            )
        except ValidationError as exc:
            message, param = validation_message(list(exc.errors()))
            raise BadRequest(f"the policy could not take the sample: {message}", param) from exc
        replies = await asyncio.gather(
            *(
                self._attempt(request.model_copy(update={"seed": seed}))
                for seed in range(self.samples)
            )
        )
        successes = [1.0 if score_reply(sample, reply) else 0.0 for reply in replies]
        rate = sum(successes) / len(successes)
        return PassRate(
            score=score_from_rate(rate),
            successes=successes,
            rationale=f"The policy answered {int(sum(successes))} of {len(successes)} "
            f"attempts correctly (pass rate {rate:.2f}).",
        )
