"""Output sizing under a pixel budget, and the tile plan for large crops (pure functions)."""

from __future__ import annotations

import numpy as np
import pytest

from magsrl.magnifier.sizing import pick_network, plan_crop
from magsrl.magnifier.tiling import plan_tiles

NETS = {"span-x2": 2, "span-x4": 4}


def test_small_crop_is_capped_at_max_scale() -> None:
    plan = plan_crop(128, 128, method="sr", networks=NETS, max_pixels=1024 * 1024, max_scale=4)
    assert (plan.method, plan.backend, plan.out_size, plan.scale) == (
        "sr",
        "span-x4",
        (512, 512),
        4.0,
    )


def test_scale_fills_the_budget_and_never_exceeds_it() -> None:
    plan = plan_crop(300, 200, method="sr", networks=NETS, max_pixels=500_000, max_scale=4)
    w, h = plan.out_size
    assert w * h <= 500_000
    assert w * h > 0.98 * 500_000
    assert plan.backend == "span-x4"  # sqrt(500000/60000) = 2.89 needs the x4 network


def test_smallest_sufficient_network_is_used() -> None:
    plan = plan_crop(400, 400, method="sr", networks=NETS, max_pixels=500_000, max_scale=4)
    assert plan.backend == "span-x2"  # scale 1.77
    assert pick_network(5.0, NETS) == "span-x4"


def test_crop_at_budget_is_not_super_resolved() -> None:
    plan = plan_crop(1024, 1024, method="sr", networks=NETS, max_pixels=1024 * 1024, max_scale=4)
    assert (plan.method, plan.backend, plan.out_size) == ("crop", None, (1024, 1024))


def test_crop_over_budget_is_shrunk_to_fit() -> None:
    plan = plan_crop(2000, 1000, method="sr", networks=NETS, max_pixels=500_000, max_scale=4)
    assert plan.method == "crop"
    assert plan.out_size[0] * plan.out_size[1] <= 500_000


@pytest.mark.parametrize("method", ["bicubic", "crop"])
def test_baselines(method: str) -> None:
    plan = plan_crop(100, 50, method=method, networks={}, max_pixels=80_000, max_scale=4)  # type: ignore[arg-type]
    assert plan.method == method
    assert plan.backend is None
    expected = (400, 200) if method == "bicubic" else (100, 50)
    assert plan.out_size == expected


@pytest.mark.parametrize(("h", "w"), [(100, 100), (256, 900), (1000, 257), (513, 1300)])
def test_tiles_cover_every_pixel_exactly_once(h: int, w: int) -> None:
    tile, overlap = 256, 16
    owned = np.zeros((h, w), dtype=np.int32)
    shapes = set()
    for y0, x0, th, tw, oy0, oy1, ox0, ox1 in plan_tiles(h, w, tile, overlap):
        shapes.add((th, tw))
        assert y0 <= oy0 < oy1 <= y0 + th and x0 <= ox0 < ox1 <= x0 + tw
        # Interior cuts keep at least `overlap` pixels of context.
        if oy0 > 0:
            assert oy0 - y0 >= overlap
        if oy1 < h:
            assert y0 + th - oy1 >= overlap
        owned[oy0:oy1, ox0:ox1] += 1
    assert (owned == 1).all()
    assert len(shapes) == 1  # one shape, so all tiles batch together


def test_barely_under_budget_is_resized_not_super_resolved() -> None:
    """A 2% enlargement is not worth a network pass (it cost 3 s in the policy benchmark)."""
    plan = plan_crop(
        500, 500, method="sr", networks=NETS, max_pixels=260_000, max_scale=4, min_sr_scale=1.25
    )
    assert (plan.method, plan.backend) == ("bicubic", None)
    assert plan.out_size == (509, 509)
