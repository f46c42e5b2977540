"""The magnifier's images by id (the sha256 of the uploaded bytes), so a client uploads a
large image once and zooms into it by id many times:

- ``ImageStore``: a byte-capped LRU of decoded images, per process;
- ``SharedImages``: that LRU in front of the shared image store (``magsrl.common.image_blobs``,
  ``MAGSRL_IMAGE_STORE_DIR``). Uploads are written there too, so any magnifier replica
  behind a load balancer serves an id another replica received (a miss in its own LRU is
  read from the store and decoded once). Without a shared store, ids are per replica.
"""

from __future__ import annotations

import asyncio
import logging
from collections import OrderedDict
from collections.abc import Awaitable, Callable

import numpy as np
from prometheus_client import CollectorRegistry, Counter, Gauge

from magsrl.common.image_blobs import BadImageBlob, ImageBlobStore, ImageMissing

log = logging.getLogger("magsrl.magnifier")


class ImageStore:
    def __init__(self, capacity_bytes: int, registry: CollectorRegistry | None = None) -> None:
        self.capacity_bytes = capacity_bytes
        self._items: OrderedDict[str, np.ndarray] = OrderedDict()
        self._bytes = 0
        # registry=None leaves the metrics unregistered (plain-Python use, unit tests).
        self.lookups = Counter(
            "magsrl_image_cache_lookups_total",
            "Image cache lookups by result.",
            ["result"],
            registry=registry,
        )
        self.evictions = Counter(
            "magsrl_image_cache_evictions_total",
            "Images evicted to stay under the byte cap.",
            registry=registry,
        )
        self.size_bytes = Gauge(
            "magsrl_image_cache_bytes", "Bytes of decoded images held.", registry=registry
        )

    def __len__(self) -> int:
        return len(self._items)

    @property
    def nbytes(self) -> int:
        return self._bytes

    def get(self, image_id: str) -> np.ndarray | None:
        array = self._items.get(image_id)
        self.lookups.labels("hit" if array is not None else "miss").inc()
        if array is not None:
            self._items.move_to_end(image_id)
        return array

    def put(self, image_id: str, array: np.ndarray) -> None:
        """Keeps ``array`` (H, W, 3 uint8). An image larger than the whole cap is not kept."""
        if image_id in self._items:
            self._items.move_to_end(image_id)
            return
        if array.nbytes > self.capacity_bytes:
            return
        array.setflags(write=False)  # shared by every zoom into it
        self._items[image_id] = array
        self._bytes += array.nbytes
        while self._bytes > self.capacity_bytes:
            _, old = self._items.popitem(last=False)
            self._bytes -= old.nbytes
            self.evictions.inc()
        self.size_bytes.set(self._bytes)


class SharedImages:
    """The LRU (``cache``) in front of the shared store (``shared``, or None)."""

    def __init__(self, cache: ImageStore, shared: ImageBlobStore | None) -> None:
        self.cache = cache
        self.shared = shared

    async def get(
        self, image_id: str, decode: Callable[[bytes], Awaitable[np.ndarray]]
    ) -> np.ndarray | None:
        """The decoded image, from the LRU or else the shared store; None when neither has
        it. ``decode`` turns stored bytes into the array (the magnifier's checks)."""
        array = self.cache.get(image_id)
        if array is not None or self.shared is None:
            return array
        try:
            data = await asyncio.to_thread(self.shared.get, image_id)
        except (ImageMissing, BadImageBlob):
            return None
        except OSError as exc:  # the volume is away: a miss, as without a store
            log.warning("shared image store unreadable (%s): %s", image_id, exc)
            return None
        array = await decode(data)
        self.cache.put(image_id, array)
        return array

    async def put(self, image_id: str, data: bytes, array: np.ndarray) -> None:
        """Keeps the decoded ``array`` here and the encoded ``data`` in the shared store."""
        self.cache.put(image_id, array)
        if self.shared is None:
            return
        try:
            await asyncio.to_thread(self.shared.put, data)
        except (BadImageBlob, OSError) as exc:
            # A format the store does not keep, or a volume this process cannot write: the
            # image is still served by this replica (the LRU), as without a store.
            log.warning("image %s is not kept in the shared store: %s", image_id, exc)
