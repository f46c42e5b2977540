"""Images by reference: the shared content-addressed store (magsrl.common.image_blobs), rollout
results that carry references instead of pixels, and the learner that processes each distinct
image once per step. Pure functions and in-process objects; the tiny model's real processor."""

from __future__ import annotations

import base64
import io
import random
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from pydantic import ValidationError

from magsrl.common.image_blobs import (
    BadImageBlob,
    FolderStore,
    ImageBlobStore,
    ImageMissing,
    describe,
    open_image_store,
    store_dir,
)
from magsrl.proto.rollout import RolloutResult, Segment
from magsrl.trainer.learner_batch import collate
from magsrl.trainer.learner_images import StepImages
from magsrl.trainer.trajectory import ImageWriter, encode_images, encode_png

REDIS_BUDGET = 50 * 1024  # issue 15: bytes per result in Redis
IMAGE_PAD = 151655  # Qwen2.5-VL's <|image_pad|>
PIXELS_PER_TOKEN = 28 * 28  # Qwen2.5-VL: 14 px patches, 2 x 2 merged into one token


def picture(width: int, height: int, seed: int = 0) -> Image.Image:
    rng = np.random.default_rng(seed)
    return Image.fromarray(rng.integers(0, 256, (height, width, 3), dtype=np.uint8))


def result(k: int, segments: list[Segment], **images: object) -> RolloutResult:
    return RolloutResult(
        job_id=f"run:0:0:{k}",
        run_id="run",
        step=0,
        sample_index=0,
        group_index=k,
        version=0,
        policy_model=None,
        worker="test",
        segments=segments,
        reward=0.0,
        components={},
        answer="",
        correct=False,
        zooms=1,
        zoom_errors=0,
        rounds=2,
        completion_tokens=sum(len(s.ids) for s in segments if s.mask),
        elapsed_ms=0.0,
        **images,  # type: ignore[arg-type]
    )


# ---- the store ---------------------------------------------------------------------------------
def test_store_keeps_bytes_once_under_their_hash(tmp_path: Path) -> None:
    """Pins content addressing: the same bytes put twice are one file and one reference,
    get returns the exact bytes, and the reference describes the image from its header."""
    store = FolderStore(tmp_path)
    assert isinstance(store, ImageBlobStore)
    data = encode_png(picture(30, 20))
    first, again = store.put(data), store.put(data)
    assert first == again
    assert (first.format, first.width, first.height, first.size) == ("png", 30, 20, len(data))
    assert store.exists(first.sha256) and store.get(first) == data
    assert len([p for p in tmp_path.rglob("*") if p.is_file()]) == 1


@pytest.mark.parametrize(
    "bad",
    [
        pytest.param("../../etc/passwd", id="traversal"),
        pytest.param("A" * 64, id="uppercase"),
        pytest.param("ab" * 31, id="short"),
        pytest.param("/" + "a" * 63, id="absolute"),
    ],
)
def test_store_refuses_hashes_that_are_not_hex(tmp_path: Path, bad: str) -> None:
    """Pins path traversal: a reference read from Redis names a file only through 64 hex
    digits, never a path of its own."""
    store = FolderStore(tmp_path)
    with pytest.raises(BadImageBlob):
        store.get(bad)
    with pytest.raises(BadImageBlob):
        store.exists(bad)


def test_store_refuses_non_images_and_names_a_missing_one(tmp_path: Path) -> None:
    """Pins a store that keeps junk (a worker putting an error page) and a missing image
    that surfaces as a bare FileNotFoundError instead of saying which store lacks it."""
    store = FolderStore(tmp_path)
    with pytest.raises(BadImageBlob, match="not an image"):
        store.put(b"<html>oops</html>")
    with pytest.raises(ImageMissing, match="MAGSRL_IMAGE_STORE_DIR"):
        store.get("0" * 64)


def test_store_checks_the_size_of_a_reference(tmp_path: Path) -> None:
    """Pins a stored file that differs from its reference (replaced, truncated) being read
    as if it were the image the rollout saw."""
    store = FolderStore(tmp_path)
    ref = store.put(encode_png(picture(8, 8)))
    store.path(ref.sha256).write_bytes(encode_png(picture(9, 9)))
    with pytest.raises(BadImageBlob, match="bytes in the store"):
        store.get(ref)


def test_store_location_defaults_to_the_runs_volume(tmp_path: Path) -> None:
    """Pins the default: <runs_dir>/images, an explicit folder over it, none without both."""
    assert store_dir(None, tmp_path) == tmp_path / "images"
    assert store_dir(tmp_path / "x", tmp_path) == tmp_path / "x"
    assert store_dir(None, None) is None and open_image_store(None) is None


# ---- the result's wire format ------------------------------------------------------------------
def test_segment_runs_are_compact_in_json_and_plain_in_python() -> None:
    """Pins the image placeholders dominating a result (~4,500 ids for 3.5 MP): in JSON a run
    is [id, count]; read back, the ids are exactly the original list; old plain lists read."""
    ids = [1, 2, *[IMAGE_PAD] * 1000, 3, 3, 3, 4, *[7] * 4]
    segment = Segment(ids=ids, mask=0)
    text = segment.model_dump_json()
    assert f"[1,2,[{IMAGE_PAD},1000],3,3,3,4,[7,4]]" in text
    assert Segment.model_validate_json(text).ids == ids
    assert Segment.model_validate({"ids": ids, "mask": 0}).ids == ids  # the old format
    assert segment.model_dump()["ids"] == ids  # Python dumps stay plain
    with pytest.raises(ValidationError, match="count"):
        Segment.model_validate({"ids": [[5, 0]], "mask": 0})


def test_a_result_carries_images_one_way() -> None:
    """Pins a result with both inline images and references (which would the learner use?)
    and an old-format result (inline base64 only) that must still validate."""
    segs = [Segment(ids=[1, IMAGE_PAD, 2], mask=0), Segment(ids=[3], mask=1, logprobs=[-1.0])]
    inline = encode_images([picture(4, 4)])
    old = result(0, segs, images=inline)
    assert old.image_count == 1 and old.image_refs == []
    legacy = old.model_dump(mode="json", exclude={"image_refs"})
    assert RolloutResult.model_validate(legacy).images == inline
    stored = describe(base64.b64decode(inline[0]))
    with pytest.raises(ValidationError, match="not both"):
        result(0, segs, images=inline, image_refs=[stored])


def test_result_with_a_35mp_original_and_two_crops_fits_in_50kb(tmp_path: Path) -> None:
    """Pins issue 15's budget: a result for a 3.5 MP original and two 1 MP crops, two rounds
    of 512 sampled tokens (the job's default max_tokens) with their log-probs, is at most
    50 KB as the worker writes it to Redis (it was 8.7 MB with base64 PNGs)."""
    original = picture(2296, 1512)  # 3.47 MP, multiples of 28: the policy's frame
    crops = [picture(1008, 1008, seed=1), picture(1008, 1008, seed=2)]
    refs = ImageWriter(FolderStore(tmp_path)).refs([original, *crops])
    rng = random.Random(0)

    def sampled(n: int) -> Segment:
        return Segment(
            ids=[rng.randrange(151_000) for _ in range(n)],
            mask=1,
            logprobs=[-rng.expovariate(2.0) for _ in range(n)],
        )

    def text(n: int) -> list[int]:
        return [rng.randrange(151_000) for _ in range(n)]

    image_tokens = [im.width * im.height // PIXELS_PER_TOKEN for im in (original, *crops)]
    prompt = text(60) + [IMAGE_PAD] * image_tokens[0] + text(40)
    observation = text(20)
    for n in image_tokens[1:]:
        observation += [151652, *[IMAGE_PAD] * n, 151653]
    segments = [
        Segment(ids=prompt, mask=0),
        sampled(512),
        Segment(ids=observation + text(10), mask=0),
        sampled(512),
    ]
    built = result(0, segments, image_refs=refs)
    size = len(built.model_dump_json().encode())
    assert size <= REDIS_BUDGET, f"{size} bytes per result"
    assert RolloutResult.model_validate_json(built.model_dump_json()) == built


# ---- the worker's writer -----------------------------------------------------------------------
def test_writer_encodes_a_known_original_once(tmp_path: Path, monkeypatch) -> None:
    """Pins a worker re-encoding the group's shared original for every rollout (G PNG
    encodes of 3.5 MP): a keyed image is encoded once while the store keeps it, and again
    after the store lost it."""
    import magsrl.trainer.trajectory as trajectory

    encodes = []
    real = trajectory.encode_png
    monkeypatch.setattr(
        trajectory, "encode_png", lambda im, *level: encodes.append(im.size) or real(im, *level)
    )
    store = FolderStore(tmp_path)
    writer = ImageWriter(store)
    original, crop = picture(40, 30), picture(10, 10, seed=3)
    key = ("image-id", original.size, original.mode)
    first = writer.refs([original, crop], [key, None])
    second = writer.refs([original, crop], [key, None])
    assert first == second and encodes == [(40, 30), (10, 10), (10, 10)]
    store.path(first[0].sha256).unlink()
    writer.refs([original], [key])
    assert store.exists(first[0].sha256) and len(encodes) == 4


# ---- the learner -------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def processor(tiny_model_dir: Path):
    from magsrl.models.loading import load_processor

    return load_processor(tiny_model_dir)


def group(processor, store: FolderStore | None, g: int) -> tuple[list[RolloutResult], list]:
    """G rollouts of one sample: one original (shared) and two crops each (distinct)."""
    merge = processor.image_processor.merge_size * processor.image_processor.patch_size
    original = picture(8 * merge, 6 * merge)
    results, images = [], []
    for k in range(g):
        crops = [picture(4 * merge, 4 * merge, seed=10 * k + j) for j in (1, 2)]
        ims = [original, *crops]
        ids = [1]
        for im in ims:
            ids += [processor.image_token_id] * (im.width * im.height // merge**2) + [2]
        segments = [Segment(ids=ids, mask=0), Segment(ids=[3, 4], mask=1, logprobs=[-1.0] * 2)]
        if store is None:
            results.append(result(k, segments, images=encode_images(ims)))
        else:
            results.append(result(k, segments, image_refs=ImageWriter(store).refs(ims)))
        images += ims
    return results, images


def test_learner_processes_each_distinct_image_once_and_as_before(
    processor, tmp_path: Path
) -> None:
    """Pins the learner decoding and processing the same original G times, and pins the new
    path against the old one: pixel values and grids from references, image by image, are
    exactly one processor call over every decoded image (what collate did before)."""
    store = FolderStore(tmp_path)
    results, images = group(processor, store, g=8)
    step = StepImages(processor, store)
    batch = collate(results, processor, pad_id=0, images=step)
    assert step.processed == 1 + 2 * 8
    before = processor.image_processor(images=images, return_tensors="pt")
    assert torch.equal(batch.pixel_values, before["pixel_values"])
    assert torch.equal(batch.image_grid_thw, before["image_grid_thw"])
    # Two micro-batches of one step share the cache: the original is not processed again.
    collate(results[:4], processor, pad_id=0, images=step)
    assert step.processed == 1 + 2 * 8


def test_old_inline_results_still_collate_the_same(processor) -> None:
    """Pins a run resumed across versions: results written with base64 images (before the
    store) give the same batch as references do."""
    results, images = group(processor, None, g=2)
    batch = collate(results, processor, pad_id=0)
    before = processor.image_processor(images=images, return_tensors="pt")
    assert torch.equal(batch.pixel_values, before["pixel_values"])


def test_references_without_a_store_are_refused_clearly(processor, tmp_path: Path) -> None:
    """Pins a learner without the workers' store failing with a bare KeyError or a 'file not
    found' that does not say which setting to fix."""
    results, _ = group(processor, FolderStore(tmp_path / "workers"), g=1)
    with pytest.raises(ValueError, match="MAGSRL_IMAGE_STORE_DIR"):
        collate(results, processor, pad_id=0)
    with pytest.raises(ImageMissing, match="MAGSRL_IMAGE_STORE_DIR"):
        collate(results, processor, pad_id=0, images=StepImages(processor, FolderStore(tmp_path)))


def test_inline_image_that_is_not_base64_names_the_rollout(processor) -> None:
    """Pins a corrupt legacy result failing deep inside PIL without naming the rollout."""
    segs = [Segment(ids=[1, processor.image_token_id, 2], mask=0)]
    segs.append(Segment(ids=[3], mask=1, logprobs=[-1.0]))
    bad = result(0, segs, images=["not base64!"])
    with pytest.raises(ValueError, match="rollout run:0:0:0"):
        collate([bad], processor, pad_id=0)
    buf = io.BytesIO(b"\x89PNG junk")
    with pytest.raises(ValueError, match="does not decode"):
        collate([result(0, segs, images=[base64.b64encode(buf.getvalue()).decode()])], processor, 0)


@pytest.mark.parametrize(
    "size, mode",
    [
        pytest.param((224, 168), "RGB", id="at-grid"),
        pytest.param((56, 56), "RGB", id="smallest"),
        pytest.param((252, 1008), "RGB", id="tall"),
        pytest.param((230, 170), "RGB", id="resized"),
        pytest.param((517, 389), "RGB", id="resized-crop"),
        pytest.param((20, 90), "RGB", id="resized-up"),
        pytest.param((224, 168), "L", id="grey-falls-back"),
        pytest.param((224, 168), "RGBA", id="rgba-falls-back"),
    ],
)
def test_fast_pixels_are_the_processors_bit_for_bit(size, mode, tiny_model_dir: Path) -> None:
    """Pins the learner's fast pixel path drifting from the image processor (a different
    rounding of rescale/normalise, a transposed patch layout): any difference would make
    the learner's log-probs differ from the sampler's; a resize unlike the processor's (a
    crop is not at a multiple of 28). Other modes go through the processor itself."""
    from magsrl.models.loading import load_processor
    from magsrl.trainer.fast_pixels import FastPixels

    for bounds in ((None, None), (3136, 12_845_056)):
        ip = load_processor(tiny_model_dir, *bounds).image_processor
        fast = FastPixels(ip)
        assert fast.table is not None
        image = picture(*size, seed=7).convert(mode)
        pixels, grid = fast(image)
        want = ip(images=[image], return_tensors="pt")
        assert torch.equal(pixels, want["pixel_values"])
        assert torch.equal(grid, want["image_grid_thw"][0])
        assert fast.fast == int(mode == "RGB")


@pytest.mark.slow  # two tiny learners: ~10 s on 2 busy cores
def test_a_learner_step_on_references_equals_one_on_inline_images(
    processor, tiny_model_dir: Path, tmp_path: Path
) -> None:
    """Pins the learner's input side end to end: a step on results that carry references
    (resolved through the learner's store, one processing per distinct image) moves the
    weights exactly as the same step on the old inline results."""
    from magsrl.trainer.learner import Learner
    from magsrl.trainer.run_config import RunConfig

    config = RunConfig.model_validate(
        {
            "name": "refs",
            "model": "tiny",
            "dataset": "unused",
            "grpo": {"group_size": 4, "prompts_per_step": 1, "micro_batch_size": 2},
            "lora": {"dropout": 0.0},
        }
    )
    store = FolderStore(tmp_path)
    by_ref, _ = group(processor, store, g=4)
    inline, _ = group(processor, None, g=4)
    advantages = torch.tensor([1.0, -1.0, 0.5, -0.5])
    after = []
    for results, store_dir_ in ((by_ref, tmp_path), (inline, None)):
        learner = Learner(tiny_model_dir, config, "cpu", image_store_dir=store_dir_)
        metrics = learner.step(results, advantages)
        assert np.isfinite(metrics["loss"])
        after.append(learner.trainable_state())
    assert after[0].keys() == after[1].keys()
    assert all(torch.equal(after[0][k], after[1][k]) for k in after[0])


@pytest.mark.slow  # starts a 2-rank torchrun group (~15 s of process start)
def test_two_learner_ranks_resolve_references_through_the_store(
    tiny_model_dir: Path, tmp_path: Path
) -> None:
    """Pins the rank processes without the store: a torchrun group gets the store folder in
    its init file, and a step on references equals the 1-process step on inline images."""
    from magsrl.trainer.learner import Learner
    from magsrl.trainer.learner_group import LearnerGroup, make_learner
    from tests.test_distributed_learner import STEPS, image_results, run_config

    inline = image_results(tiny_model_dir)
    store = FolderStore(tmp_path / "images")
    by_ref = [
        r.model_copy(update={"images": [], "image_refs": [store.put(base64.b64decode(b))]})
        for r in inline
        for b in r.images
    ]
    chosen, advantages = STEPS[0]
    single = Learner(tiny_model_dir, run_config(lora=True))
    expected = single.step(inline[chosen], advantages)
    group = make_learner(
        tiny_model_dir,
        run_config(lora=True, ranks=2),
        work_dir=tmp_path / "learner",
        image_store_dir=tmp_path / "images",
    )
    assert isinstance(group, LearnerGroup)
    try:
        got = group.step(by_ref[chosen], advantages)
    finally:
        group.close()
    for name in ("loss", "grad_norm", "tokens", "logprob_diff"):
        assert got[name] == pytest.approx(expected[name], rel=1e-5, abs=1e-7), name
