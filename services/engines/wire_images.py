"""Images on their way to an OpenAI-compatible upstream, as data URLs, without re-encoding
what the upstream can read as it is.

A client's JPEG or PNG goes through as the bytes it sent (``EncodedImage``, the ``source``
of an image part), under the mime type of the bytes' real format, not the client's label.
Only what has no usable source (a decoded or resized PIL image, a format or mode vLLM
would read differently) is encoded, as lossless PNG at compression level 1, and always off
the event loop (``wire_messages`` runs in an executor).

Which bytes can pass unchanged follows how vLLM loads a data URL
(vllm/multimodal/media/image.py, ``ImageMediaIO.load_bytes``: ``Image.open``, ``load``, then
``convert_image_mode`` to RGB) with no EXIF transpose: a JPEG whose EXIF turns it would reach
the model unturned, while magsrl's boxes are in the turned frame, so such a JPEG is decoded,
turned and encoded here (common/images.py ``decode_image``); palette or alpha images too,
since their conversion to RGB is not pinned.
"""

from __future__ import annotations

import hashlib
import io
from dataclasses import dataclass
from typing import Any

from PIL import Image

from magsrl.common.images import PNG_COMPRESS_LEVEL, to_b64

# PIL format -> the data-URL mime type vLLM's loader reads it as.
PASSTHROUGH_FORMATS = {"JPEG": "image/jpeg", "PNG": "image/png"}
# Modes whose RGB conversion is plain (greyscale copied to three channels): same pixels
# whether vLLM or magsrl converts them.
PASSTHROUGH_MODES = frozenset({"RGB", "L"})
_EXIF_ORIENTATION = 0x0112


@dataclass(frozen=True)
class EncodedImage:
    """Image bytes as a client sent them, ready to forward. ``b64`` is the client's own
    base64 text when it came as a data URL, so not even the base64 is redone."""

    data: bytes
    mime: str
    b64: str | None = None

    def data_url(self) -> str:
        return f"data:{self.mime};base64,{self.b64 if self.b64 is not None else to_b64(self.data)}"


def passthrough_mime(probe: Image.Image, data: bytes) -> str | None:
    """The mime type under which ``data``, opened (header only) as ``probe``, can go to the
    upstream as it is, or None when it must be decoded and encoded. Reads the header and
    the last bytes only: a file cut short (no JPEG end marker, no PNG IEND chunk) is decoded
    here, so the caller gets decode_image's 400 instead of an upstream failure."""
    mime = PASSTHROUGH_FORMATS.get(probe.format or "")
    if mime is None or probe.mode not in PASSTHROUGH_MODES:
        return None
    tail = data[-32:]
    if (b"\xff\xd9" if probe.format == "JPEG" else b"IEND") not in tail:
        return None
    try:
        orientation = probe.getexif().get(_EXIF_ORIENTATION, 1)
    except (OSError, ValueError, SyntaxError):
        return None  # unreadable EXIF: decode_image decides what a viewer would see
    return mime if orientation == 1 else None


def png_data_url(image: Image.Image) -> str:
    """A lossless data URL of a decoded image (the upstream decodes and resizes it anyway,
    so level 1: about 5x faster than Pillow's default 6 for about 10% more bytes)."""
    buf = io.BytesIO()
    image.save(buf, "PNG", compress_level=PNG_COMPRESS_LEVEL)
    return "data:image/png;base64," + to_b64(buf.getvalue())


def part_url(part: dict[str, Any]) -> str:
    source = part.get("source")
    if isinstance(source, EncodedImage):
        return source.data_url()
    return png_data_url(part["image"])


def wire_message(message: dict[str, Any]) -> dict[str, Any]:
    """An engine message (image parts carry PIL images, maybe a ``source``) as an OpenAI
    message with data-URL image parts. Blocking (encodes): call it off the event loop."""
    content = message.get("content")
    out = dict(message)
    if isinstance(content, list):
        out["content"] = [
            {"type": "image_url", "image_url": {"url": part_url(p)}}
            if p.get("type") == "image"
            else p
            for p in content
        ]
    return out


def wire_messages(messages: list[dict[str, Any]]) -> tuple[list[dict[str, Any]], str]:
    """The OpenAI messages, and the routing key of the conversation: a digest of everything
    up to and including its first user turn (the system prompt, the question, the original
    image), which every round of one episode repeats and which is the prefix an upstream's
    prefix cache can reuse. Blocking: run it in an executor."""
    wired = [wire_message(m) for m in messages]
    digest = hashlib.blake2b(digest_size=16)
    for message in wired:
        digest.update(str(message.get("role")).encode())
        content = message.get("content")
        if isinstance(content, list):
            for part in content:
                if part.get("type") == "image_url":
                    digest.update(part["image_url"]["url"].encode())
                else:
                    digest.update(str(part.get("text", "")).encode())
        else:
            digest.update(str(content or "").encode())
        if message.get("role") == "user":
            break
    return wired, digest.hexdigest()
