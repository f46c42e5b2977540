"""The zoom loop behind ``/answer``, the rollout workers and eval: think and pick regions,
magnify them, look again, answer.

Round 1 shows the image with the protocol's system prompt. The protocol (an entry of
``magsrl.zoom.protocols``: magsrl's tags or tool calls, DeepEyes, Mini-o3, MGPO) parses each
turn's zoom requests and says which convention and frame their numbers are in; they become
pixel crops of the original (a box on an earlier crop maps through it), the original goes to
the magnifier once and every zoom is a request by id. The protocol lays the crops out as its
checkpoints were trained to see them, and the model goes on until it answers or the turn
limit (``max_rounds``, else the protocol's own) is spent. A malformed or empty zoom is told
to the model as an error and the loop goes on.
"""

from __future__ import annotations

import asyncio
import base64
import hashlib
import io
import time
from dataclasses import dataclass, field, replace
from typing import Any

from PIL import Image

from magsrl.clients.magnifier import MagnifierClient, MagnifierError, MagnifierUnavailable
from magsrl.common.coords import BoxError, Convention
from magsrl.common.errors import BadRequest, ServiceUnavailable
from magsrl.common.images import encode_image
from magsrl.proto.episode import DEFAULT_CROP_PIXELS, EpisodeOptions, ServedOptions
from magsrl.proto.magnifier import ZoomResponse
from magsrl.proto.policy import CropRef, Round, Usage, Zoom
from magsrl.proto.prompts import coordinate_hint, region_caption, render_prompt
from magsrl.proto.vocab import (
    CropPlacement,
    ImageFormat,
    MagnifierDown,
    Protocol,
    ReturnCrops,
    ZoomMode,
)
from magsrl.zoom.boxes import ImageSlot, from_original, original_slot, to_original_crop
from magsrl.zoom.choices import normalize_choice
from magsrl.zoom.engine import Engine, GenerationRequest, GenerationResult, SamplingParams
from magsrl.zoom.parsing import ZoomCall
from magsrl.zoom.protocols import Feedback, ZoomProtocol, resolve_protocol

MIN_BOX_SIDE = 28  # the design's minimum crop side, in original pixels


@dataclass
class LoopOptions:
    """The episode's options resolved for one run of the loop. Built from the wire model
    (``EpisodeOptions``, with the policy's served settings filling its gaps) by
    ``from_episode``, the one place the two meet."""

    zoom: ZoomMode = "auto"
    upscale: str = "sr"  # an UpscaleMethod, or a magnifier backend name
    max_rounds: int | None = None  # None: the protocol's own turn limit
    protocol: Protocol = "tags"
    crop_in: CropPlacement = "tool"
    magnifier_down: MagnifierDown = "error"
    crop_max_pixels: int = DEFAULT_CROP_PIXELS
    crop_format: ImageFormat = "jpeg"
    crop_quality: int = 95
    max_zooms_per_round: int = 4
    model: str | None = None
    sampling: SamplingParams = field(default_factory=lambda: SamplingParams(temperature=0.0))
    return_crops: ReturnCrops = "ref"
    question_suffix: str | None = None  # e.g. the curriculum's stage-1 suffix
    # Images one prompt may hold (the engine's per-prompt limit: vLLM's
    # --limit-mm-per-prompt, the policy's MAGSRL_MAX_IMAGES). Crops that would pass it are
    # not made; the model is told why. None: no limit.
    max_images: int | None = None

    @classmethod
    def from_episode(
        cls,
        options: EpisodeOptions,
        served: ServedOptions,
        *,
        model: str | None = None,
        return_crops: ReturnCrops = "ref",
        question_suffix: str | None = None,
        logprobs: bool = False,
        max_images: int | None = None,
    ) -> LoopOptions:
        """``options`` with unset served fields taken from ``served`` (what the policy
        serves), as ``/answer``, the rollout worker and eval all run them."""
        o = options.resolve(served)
        # Left unset, the turn limit is the protocol's (Mini-o3 12, DeepEyes 5, magsrl 2).
        explicit = "max_rounds" in options.model_fields_set
        return cls(
            zoom=o.zoom,
            upscale=o.upscale,
            max_rounds=o.max_rounds if explicit else None,
            protocol=o.protocol,  # type: ignore[arg-type]  # resolved: never None
            crop_in=o.crop_in,  # type: ignore[arg-type]
            magnifier_down=o.magnifier_down,  # type: ignore[arg-type]
            crop_max_pixels=o.crop_max_pixels,  # type: ignore[arg-type]
            crop_format=o.crop_format,  # type: ignore[arg-type]
            crop_quality=o.crop_quality,  # type: ignore[arg-type]
            max_zooms_per_round=o.max_zooms_per_round,  # type: ignore[arg-type]
            model=model,
            return_crops=return_crops,
            question_suffix=question_suffix,
            max_images=max_images,
            sampling=SamplingParams(
                max_tokens=o.max_tokens,
                temperature=o.temperature,
                top_p=o.top_p,
                seed=o.seed,
                logprobs=logprobs,
            ),
        )


@dataclass
class LoopOutcome:
    answer: str
    raw_answer: str
    rounds: list[Round]
    results: list[GenerationResult]  # per round, with token ids, for training
    messages: list[dict[str, Any]]  # the whole conversation as the engine saw it
    usage: Usage
    engine_ms: float
    magnifier_ms: float
    zoom_skipped: str | None = None
    zoom_errors: int = 0
    # Summed engine queue wait, None when any round's engine could not tell.
    queue_ms: float | None = None
    # Per round: zoom requests beyond max_zooms_per_round, dropped unzoomed (the reward
    # penalises them as a format error).
    zooms_over_limit: list[int] = field(default_factory=list)
    protocol: str = "magsrl_tags"  # the registry name the episode ran (auto resolved)


@dataclass
class _State:
    slots: list[ImageSlot]
    image_id: str | None = None
    engine_ms: float = 0.0
    magnifier_ms: float = 0.0
    queue_ms: float | None = 0.0
    zoom_errors: int = 0
    zoom_skipped: str | None = None
    crop_images: dict[int, Image.Image] = field(default_factory=dict)  # by id(Zoom)
    crop_slots: dict[int, int] = field(default_factory=dict)  # image number, by id(Zoom)


@dataclass
class Episode:
    """One conversation in progress: what the model has seen and said so far."""

    image: Image.Image
    image_bytes: bytes | None
    original_size: tuple[int, int]
    options: list[str] | None
    opts: LoopOptions
    messages: list[dict[str, Any]]
    state: _State
    tools: list[dict[str, Any]] | None
    max_rounds: int
    protocol: ZoomProtocol
    question: str = ""
    rounds: list[Round] = field(default_factory=list)
    results: list[GenerationResult] = field(default_factory=list)
    usage: Usage = field(default_factory=Usage)
    zooms_over_limit: list[int] = field(default_factory=list)

    def record(self, result: GenerationResult) -> None:
        self.results.append(result)
        self.state.engine_ms += result.engine_ms
        if self.state.queue_ms is not None:
            self.state.queue_ms = (
                None if result.queue_ms is None else self.state.queue_ms + result.queue_ms
            )
        self.usage.prompt_tokens += result.prompt_tokens
        self.usage.completion_tokens += len(result.completions[0].token_ids)


class ZoomLoop:
    def __init__(
        self, engine: Engine, magnifier: MagnifierClient, min_box_side: int = MIN_BOX_SIDE
    ) -> None:
        self.engine = engine
        self.magnifier = magnifier
        self.min_box_side = min_box_side

    @property
    def convention(self) -> Convention:
        # Known once the engine has loaded the model (its family decides the convention).
        return self.engine.family.convention

    # ---- prompts --------------------------------------------------------------------
    def _hint(self, size: tuple[int, int]) -> str:
        frame = self.engine.frame_size(*size) if self.convention is Convention.QWEN2_5_VL else size
        return coordinate_hint(self.convention, *frame)

    def protocol(self, opts: LoopOptions) -> ZoomProtocol:
        """The options' protocol; ``auto`` picks it from the served model's name."""
        return resolve_protocol(
            opts.protocol, (getattr(self.engine, "base_model", None), opts.model)
        )

    def initial_messages(
        self,
        image: Image.Image,
        question: str,
        options: list[str] | None,
        opts: LoopOptions,
        original_size: tuple[int, int] | None = None,
        protocol: ZoomProtocol | None = None,
    ) -> list[dict[str, Any]]:
        protocol = protocol or self.protocol(opts)
        if opts.zoom == "off":
            system = render_prompt("system_direct")
        else:
            system = protocol.system_prompt(self._hint(original_size or image.size))
        text = protocol.user_text(question, options)
        if opts.question_suffix:
            text = f"{text}\n{opts.question_suffix}"
        if opts.zoom == "force":
            text = f"{text}\n{render_prompt('force_grounding')}"
        user = {
            "role": "user",
            "content": [{"type": "image", "image": image}, {"type": "text", "text": text}],
        }
        # An empty system prompt: the protocol's checkpoints were trained on the template's
        # own (Qwen3-VL renders the tools there), so none is sent.
        return [{"role": "system", "content": system}, user] if system else [user]

    # ---- the loop -------------------------------------------------------------------
    def start(
        self,
        image: Image.Image,
        image_bytes: bytes | None,
        image_id: str | None,
        question: str,
        options: list[str] | None,
        opts: LoopOptions,
        original_size: tuple[int, int] | None = None,
    ) -> Episode:
        """A new conversation about ``image``, ready for round 1. ``image`` may be a reduced
        decode of ``image_bytes`` (the model's view); ``original_size`` is then the size
        boxes refer to, and the magnifier crops from the bytes."""
        size = original_size or image.size
        if image.size != size and image_bytes is None:
            raise ValueError("a reduced image needs its original bytes for the magnifier")
        protocol = self.protocol(opts)
        tools = protocol.tools() if protocol.tools and opts.zoom != "off" else None
        return Episode(
            original_size=size,
            image=image,
            image_bytes=image_bytes,
            options=options,
            opts=opts,
            messages=self.initial_messages(image, question, options, opts, size, protocol),
            state=_State(slots=[original_slot(*size)], image_id=image_id),
            tools=tools,
            max_rounds=1 if opts.zoom == "off" else opts.max_rounds or protocol.max_rounds,
            protocol=protocol,
            question=question,
        )

    async def observe(self, episode: Episode, text: str) -> bool:
        """Takes the model's turn: zooms what it asked for and appends the feedback. True
        when the model should speak again."""
        opts, state = episode.opts, episode.state
        round_index = len(episode.rounds)
        last = round_index >= episode.max_rounds - 1
        protocol = episode.protocol
        parsed = protocol.parse(text)
        calls = [] if (opts.zoom == "off" or last or state.zoom_skipped) else parsed
        if not calls:
            episode.rounds.append(Round(text=text))
            episode.zooms_over_limit.append(0)
            return False
        episode.zooms_over_limit.append(max(0, len(calls) - opts.max_zooms_per_round))
        calls = calls[: opts.max_zooms_per_round]
        room = self._image_room(episode)
        image = episode.image
        zooms = await self._zoom(calls[:room], image, episode.image_bytes, state, opts, protocol)
        zooms += [_over_limit(call, opts.max_images) for call in calls[room:]]
        episode.rounds.append(Round(text=text, zooms=zooms))
        if state.zoom_skipped:
            episode.messages += self._continue_without_zoom(text, state.zoom_skipped)
            return True
        original = episode.original_size
        episode.messages += protocol.feedback(
            Feedback(
                text=text,
                calls=calls,
                zooms=zooms,
                images=[state.crop_images.get(id(z)) for z in zooms],
                observations=[state.crop_slots.get(id(z)) for z in zooms],
                regions=[
                    self._region_parts(k, z, state.crop_images.get(id(z)), original)
                    for k, z in enumerate(zooms, 1)
                ],
                tail=render_prompt("zoom_feedback"),
                round_index=round_index,
                crop_in=opts.crop_in,
                question=episode.question,
                options=episode.options,
                original=image,
            )
        )
        return True

    def _image_room(self, episode: Episode) -> int:
        """How many crops this round may add before the prompt passes ``max_images``."""
        if episode.opts.max_images is None:
            return episode.opts.max_zooms_per_round
        held = sum(1 for message in episode.messages for _ in _image_parts(message))
        return max(0, episode.opts.max_images - held)

    async def run(
        self,
        image: Image.Image,
        image_bytes: bytes | None,
        image_id: str | None,
        question: str,
        options: list[str] | None,
        opts: LoopOptions,
        original_size: tuple[int, int] | None = None,
    ) -> LoopOutcome:
        episode = self.start(image, image_bytes, image_id, question, options, opts, original_size)
        while True:
            result = await self.engine.generate(
                GenerationRequest(
                    messages=episode.messages,
                    sampling=round_sampling(opts, len(episode.rounds), episode.tools is not None),
                    tools=episode.tools,
                    model=opts.model,
                )
            )
            episode.record(result)
            if not await self.observe(episode, result.completions[0].text):
                break
        return self.finish(episode)

    def finish(self, episode: Episode) -> LoopOutcome:
        usage = episode.usage
        usage.total_tokens = usage.prompt_tokens + usage.completion_tokens
        raw = episode.protocol.answer(episode.rounds[-1].text) if episode.rounds else ""
        answer = raw
        if episode.options:
            answer = normalize_choice(raw, episode.options) or raw
        state = episode.state
        return LoopOutcome(
            answer=answer,
            raw_answer=raw,
            rounds=episode.rounds,
            results=episode.results,
            messages=episode.messages,
            usage=usage,
            engine_ms=state.engine_ms,
            magnifier_ms=state.magnifier_ms,
            queue_ms=state.queue_ms if episode.results else None,
            zoom_skipped=state.zoom_skipped,
            zoom_errors=state.zoom_errors,
            zooms_over_limit=list(episode.zooms_over_limit),
            protocol=episode.protocol.name,
        )

    # ---- zooming --------------------------------------------------------------------
    async def _zoom(
        self,
        calls: list[ZoomCall],
        image: Image.Image,
        image_bytes: bytes | None,
        state: _State,
        opts: LoopOptions,
        protocol: ZoomProtocol,
    ) -> list[Zoom]:
        original = state.slots[0].width, state.slots[0].height
        # The protocol's convention and frame where it has its own (DeepEyes: pixels of its
        # processor's resize), else the served family's.
        convention = protocol.convention or self.convention
        frame_size = protocol.frame_fn(self.engine.frame_size)
        zooms: list[Zoom] = []
        images = state.crop_images
        boxes: list[tuple[int, int, int, int]] = []
        for call in calls:
            error = call.error
            box = None
            if error is None and call.box is not None:
                try:
                    box = to_original_crop(
                        call.box,
                        call.img_idx,
                        state.slots,
                        convention,
                        frame_size,
                        original,
                        self.min_box_side,
                    )
                except BoxError as exc:
                    error = str(exc)
            elif error is None:
                error = "the zoom request has no box"
            if error is not None:
                state.zoom_errors += 1
            else:
                boxes.append(box)  # type: ignore[arg-type]
            zooms.append(
                Zoom(
                    box=list(box) if box else None,
                    img_idx=call.img_idx,
                    label=call.label,
                    error=error,
                )
            )
        if not boxes:
            return zooms
        started = time.perf_counter()
        try:
            crops = await self._magnify(image, image_bytes, state, boxes, opts)
        except MagnifierUnavailable as exc:
            if opts.magnifier_down == "error":
                raise ServiceUnavailable(f"the magnifier is unavailable: {exc}") from exc
            state.zoom_skipped = f"the magnifier is unavailable, so no zoom was done: {exc}"
            return zooms
        finally:
            state.magnifier_ms += (time.perf_counter() - started) * 1000
        it = iter(crops)
        for zoom in zooms:
            if zoom.error is None:
                crop, crop_image = next(it)
                zoom.crop = crop
                state.slots.append(ImageSlot(crop_image.width, crop_image.height, tuple(zoom.box)))  # type: ignore[arg-type]
                images[id(zoom)] = crop_image
                state.crop_slots[id(zoom)] = len(state.slots) - 1
        return zooms

    async def _magnify(
        self,
        image: Image.Image,
        image_bytes: bytes | None,
        state: _State,
        boxes: list[tuple[int, int, int, int]],
        opts: LoopOptions,
    ) -> list[tuple[CropRef, Image.Image]]:
        # Image work runs in a thread, off the event loop (issue 15).
        data = image_bytes or await asyncio.to_thread(encode_image, image, "png")

        async def zoom() -> ZoomResponse:
            if state.image_id is None:
                state.image_id = (await self.magnifier.upload(data)).image_id
            return await self.magnifier.zoom(
                state.image_id,
                boxes,
                coords="pixel",
                method=opts.upscale,
                max_pixels=opts.crop_max_pixels,
                fmt=opts.crop_format,
                quality=opts.crop_quality,
            )

        try:
            response = await zoom()
        except MagnifierError as exc:
            if exc.status != 404:
                raise BadRequest(f"the magnifier refused the zoom: {exc.message}") from exc
            # Evicted from the magnifier's cache since the upload: send it once more.
            state.image_id = None
            response = await zoom()
        out = []
        for crop in response.crops:
            data = base64.b64decode(crop.b64)
            crop_image = await asyncio.to_thread(_decoded_crop, data)
            out.append(
                (
                    CropRef(
                        box=crop.box,
                        width=crop.width,
                        height=crop.height,
                        method=crop.method,
                        model=crop.model,
                        format=crop.format,
                        b64=crop.b64 if opts.return_crops == "b64" else None,
                    ),
                    crop_image,
                )
            )
        return out

    # ---- feedback messages ----------------------------------------------------------
    def _region_parts(
        self, index: int, zoom: Zoom, image: Image.Image | None, original: tuple[int, int]
    ) -> list[dict[str, Any]]:
        if zoom.error is not None:
            return [{"type": "text", "text": render_prompt("zoom_error", reason=zoom.error)}]
        box = from_original(zoom.box or [], self.convention, original, self.engine.frame_size)
        label = region_caption(index, box)
        return [{"type": "text", "text": label}, {"type": "image", "image": image}]

    def _continue_without_zoom(self, text: str, reason: str) -> list[dict[str, Any]]:
        return [
            {"role": "assistant", "content": text},
            {"role": "user", "content": render_prompt("zoom_unavailable", reason=reason)},
        ]


def round_sampling(opts: LoopOptions, round_index: int, tools: bool = False) -> SamplingParams:
    """Round ``round_index``'s sampling settings: its own seed, derived from the episode's,
    so round 2 is an independent draw and not a replay of round 1's random stream. Round 1
    keeps the episode's seed, so a one-round episode samples as a chat request with that
    seed does. A protocol that sends tools (``tools``; or the options name magsrl's tools)
    asks for log-probs, whose per-token bytes are how an upstream engine gives back the turn
    as sampled (magsrl.engines.upstream_text)."""
    sampling = opts.sampling
    seed = sampling.seed
    if seed is not None and round_index > 0:
        digest = hashlib.sha256(f"{seed}:{round_index}".encode()).digest()
        seed = int.from_bytes(digest[:4], "big") & 0x7FFFFFFF
    named_tools = opts.protocol in ("tools", "magsrl_tools")
    wants_logprobs = sampling.logprobs or tools or (named_tools and opts.zoom != "off")
    return replace(sampling, seed=seed, logprobs=wants_logprobs)


def _image_parts(message: dict[str, Any]) -> list[dict[str, Any]]:
    content = message.get("content")
    if not isinstance(content, list):
        return []
    return [p for p in content if isinstance(p, dict) and p.get("type") == "image"]


def _over_limit(call: ZoomCall, max_images: int | None) -> Zoom:
    """A zoom request that was not made because its crop would pass the images limit."""
    reason = (
        f"not magnified: the conversation already holds the most images one prompt may "
        f"have ({max_images}, the engine's images-per-prompt limit); answer from what you "
        "have seen"
    )
    return Zoom(box=None, img_idx=call.img_idx, label=call.label, error=reason)


def _decoded_crop(data: bytes) -> Image.Image:
    return Image.open(io.BytesIO(data)).convert("RGB")
