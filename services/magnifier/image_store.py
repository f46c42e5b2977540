"""A byte-capped LRU of decoded images keyed by the sha256 of their uploaded bytes, so a
client uploads a large image once and zooms into it by id many times."""

from __future__ import annotations

from collections import OrderedDict

import numpy as np
from prometheus_client import CollectorRegistry, Counter, Gauge


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
