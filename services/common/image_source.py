"""Fetches ``url`` images under an allowlist: no ``file:``, no unlisted hosts, no redirects
off the list, and a byte cap while streaming."""

from __future__ import annotations

from collections.abc import Sequence
from urllib.parse import urljoin, urlsplit

import httpx

from magsrl.common.errors import BadRequest, PayloadTooLarge
from magsrl.common.images import decode_b64
from magsrl.proto.images import ImageRef

MAX_REDIRECTS = 3


def host_allowed(host: str, allowlist: Sequence[str]) -> bool:
    """``example.com`` matches exactly; ``*.example.com`` matches its subdomains."""
    host = host.lower().rstrip(".")
    for entry in allowlist:
        entry = entry.lower().strip()
        if entry == "*":
            return True
        if entry.startswith("*.") and host.endswith(entry[1:]):
            return True
        if host == entry:
            return True
    return False


def check_url(url: str, allowlist: Sequence[str], param: str = "image.url") -> None:
    parts = urlsplit(url)
    if parts.scheme not in ("http", "https"):
        raise BadRequest(
            f"only http(s) image URLs are accepted, not '{parts.scheme}:'; upload "
            "the bytes instead",
            param=param,
        )
    host = parts.hostname or ""
    if not host_allowed(host, allowlist):
        raise BadRequest(
            f"host '{host}' is not in the URL allowlist (MAGSRL_URL_ALLOWLIST); "
            "upload the bytes or ask the operator to allow the host",
            param=param,
        )


async def fetch_url(
    client: httpx.AsyncClient,
    url: str,
    *,
    allowlist: Sequence[str],
    max_bytes: int,
    param: str = "image.url",
) -> bytes:
    for _ in range(MAX_REDIRECTS + 1):
        check_url(url, allowlist, param)
        try:
            async with client.stream("GET", url, follow_redirects=False) as resp:
                if resp.is_redirect and "location" in resp.headers:
                    url = urljoin(url, resp.headers["location"])
                    continue
                if resp.status_code != 200:
                    raise BadRequest(
                        f"fetching the image URL gave HTTP {resp.status_code}", param=param
                    )
                chunks: list[bytes] = []
                size = 0
                async for chunk in resp.aiter_bytes():
                    size += len(chunk)
                    if size > max_bytes:
                        raise PayloadTooLarge(
                            f"the image at the URL is over {max_bytes} bytes", param=param
                        )
                    chunks.append(chunk)
                return b"".join(chunks)
        except httpx.HTTPError as exc:
            raise BadRequest(f"could not fetch the image URL: {exc}", param=param) from exc
    raise BadRequest(f"the image URL redirected more than {MAX_REDIRECTS} times", param=param)


async def inline_or_url_bytes(
    ref: ImageRef, client: httpx.AsyncClient, *, allowlist: Sequence[str], max_bytes: int
) -> bytes | None:
    """The bytes of a ``b64`` or ``url`` image reference; None for an ``id``, which each
    service resolves from its own store."""
    if ref.b64 is not None:
        return decode_b64(ref.b64, param="image.b64")
    if ref.url is not None:
        return await fetch_url(
            client, ref.url, allowlist=allowlist, max_bytes=max_bytes, param="image.url"
        )
    return None
