"""Fetches ``url`` images under an allowlist: no ``file:``, no unlisted hosts or ports, no
redirects off the list, a byte cap while streaming, and one total deadline for the whole
fetch (a server that drips a byte per read must not hold a request for minutes).

Every way a URL can be bad (unparsable, a port that is not a number, an unlisted host or
port, a dead or slow server) is the caller's fault and becomes a 400 or 413, never a 500.
"""

from __future__ import annotations

import asyncio
from collections.abc import Sequence
from urllib.parse import SplitResult, urljoin, urlsplit

import httpx

from magsrl.common.errors import BadRequest, PayloadTooLarge
from magsrl.common.images import decode_b64
from magsrl.proto.images import ImageRef

MAX_REDIRECTS = 3
DEFAULT_PORTS = {"http": 80, "https": 443}


def _split_entry(entry: str) -> tuple[str, int | None]:
    """An allowlist entry ``host``, ``host:port``, ``[v6]`` or ``[v6]:port`` as (host, port);
    an entry whose port is not a number matches nothing (port -1)."""
    entry = entry.lower().strip()
    if entry.startswith("["):
        host, _, rest = entry[1:].partition("]")
        port_text = rest.removeprefix(":") if rest.startswith(":") else None
    elif entry.count(":") == 1:
        host, port_text = entry.split(":")
    else:
        host, port_text = entry, None
    if port_text is None:
        return host.rstrip("."), None
    return host.rstrip("."), int(port_text) if port_text.isdigit() else -1


def host_allowed(host: str, allowlist: Sequence[str], port: int | None = None) -> bool:
    """``example.com`` matches exactly; ``*.example.com`` matches its subdomains; ``*`` all.
    An entry without a port allows any port; ``host:port`` allows only that port."""
    host = host.lower().rstrip(".")
    for entry in allowlist:
        entry_host, entry_port = _split_entry(entry)
        if entry_port is not None and entry_port != port:
            continue
        if entry_host == "*":
            return True
        if entry_host.startswith("*.") and host.endswith(entry_host[1:]):
            return True
        if host == entry_host:
            return True
    return False


def _parse(url: str, param: str) -> tuple[SplitResult, int | None]:
    try:
        parts = urlsplit(url)
        port = parts.port  # raises for a port that is not a number or out of range
    except ValueError as exc:
        # urlsplit refuses e.g. 'http://[::1/x' (an unclosed IPv6 bracket).
        raise BadRequest(f"the image URL is malformed ({exc})", param=param) from exc
    return parts, port


def check_url(url: str, allowlist: Sequence[str], param: str = "image.url") -> None:
    parts, port = _parse(url, param)
    if parts.scheme not in ("http", "https"):
        raise BadRequest(
            f"only http(s) image URLs are accepted, not '{parts.scheme}:'; upload "
            "the bytes instead",
            param=param,
        )
    host = parts.hostname or ""
    if not host:
        raise BadRequest("the image URL has no host", param=param)
    effective_port = port if port is not None else DEFAULT_PORTS[parts.scheme]
    if not host_allowed(host, allowlist, effective_port):
        raise BadRequest(
            f"host '{host}' (port {effective_port}) is not in the URL allowlist "
            "(MAGSRL_URL_ALLOWLIST, entries host or host:port); upload the bytes or ask the "
            "operator to allow the host",
            param=param,
        )


async def _fetch(
    client: httpx.AsyncClient, url: str, allowlist: Sequence[str], max_bytes: int, param: str
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
                            f"the image at the URL is over {max_bytes} bytes "
                            "(MAGSRL_MAX_BODY_BYTES)",
                            param=param,
                        )
                    chunks.append(chunk)
                return b"".join(chunks)
        except (httpx.HTTPError, httpx.InvalidURL) as exc:
            # InvalidURL is not an HTTPError: httpx raises it for what urlsplit let through.
            raise BadRequest(f"could not fetch the image URL: {exc}", param=param) from exc
    raise BadRequest(f"the image URL redirected more than {MAX_REDIRECTS} times", param=param)


async def fetch_url(
    client: httpx.AsyncClient,
    url: str,
    *,
    allowlist: Sequence[str],
    max_bytes: int,
    timeout_s: float | None = None,
    param: str = "image.url",
) -> bytes:
    """``timeout_s`` bounds the whole fetch, redirects included (httpx's own timeouts are
    per read, so a slow drip never trips them); by default the client's read timeout."""
    deadline = timeout_s if timeout_s is not None else (client.timeout.read or 10.0)
    try:
        async with asyncio.timeout(deadline):
            return await _fetch(client, url, allowlist, max_bytes, param)
    except TimeoutError as exc:
        raise BadRequest(
            f"fetching the image URL took over {deadline:g} s (MAGSRL_URL_TIMEOUT_S); "
            "upload the bytes instead",
            param=param,
        ) from exc


async def inline_or_url_bytes(
    ref: ImageRef,
    client: httpx.AsyncClient,
    *,
    allowlist: Sequence[str],
    max_bytes: int,
    timeout_s: float | None = None,
) -> bytes | None:
    """The bytes of a ``b64`` or ``url`` image reference; None for an ``id``, which each
    service resolves from its own store."""
    if ref.b64 is not None:
        # In a thread: megabytes of base64 would hold up the event loop.
        return await asyncio.to_thread(decode_b64, ref.b64, param="image.b64")
    if ref.url is not None:
        return await fetch_url(
            client,
            ref.url,
            allowlist=allowlist,
            max_bytes=max_bytes,
            timeout_s=timeout_s,
            param="image.url",
        )
    return None
