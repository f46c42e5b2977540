"""The trace viewer in a real headless Chromium (Debian's, driven by Playwright) against a real
policy with auth on, whose tiny model is fine-tuned to zoom: the key is typed once, an image
is uploaded, and the answer, the boxes over the image, the three crops per box and the
timing must render with no console error. A second test browses an eval results folder.
Screenshots land in tests/artifacts/."""

from __future__ import annotations

import shutil
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from PIL import Image

from magsrl.policy.scripted import Script, build_scripted_model
from magsrl.proto.eval import RESULTS_FILE, THUMB_DIR, EvalRecord
from magsrl.proto.policy import CropRef, Round, Zoom
from tests.conftest import ARTIFACTS, RunningService, photo, png_bytes, start_service

pytestmark = pytest.mark.slow

CHROMIUM = Path("/usr/bin/chromium")
# As docs/environment notes for this Chromium; Playwright adds its own headless switch too.
CHROMIUM_ARGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-background-networking",
    "--disable-component-update",
    "--no-first-run",
    "--disable-quic",
    "--disable-sync",
]
KEY = "browser-test-key"
QUESTION = "What colour is the small sign?"
BOX = [60, 40, 120, 100]  # in the tiny model's resized frame (Qwen2.5-VL convention)
ROUND1 = f"<think>The sign is too small.<zoom>[{BOX}]</zoom></think>"
ROUND2 = "<rethink>The magnified view shows it.</rethink><answer>red</answer>"
TIMEOUT_MS = 90_000


def chromium_or_fail() -> str:
    if not CHROMIUM.exists():
        pytest.fail(
            f"Debian's Chromium is not at {CHROMIUM}: run `make browser` (it runs apt-get "
            "install chromium). Playwright's own browser download cannot work offline."
        )
    return str(CHROMIUM)


@pytest.fixture(scope="module")
def browser(zooming_policy: RunningService) -> Iterator[Any]:
    # After the policy: Playwright's sync API keeps an event loop running in this thread,
    # and building the scripted model needs asyncio.run.
    from playwright.sync_api import sync_playwright

    executable = chromium_or_fail()
    with sync_playwright() as pw:
        # launch() gives every run a fresh temporary profile (user-data-dir) of its own.
        browser = pw.chromium.launch(executable_path=executable, headless=True, args=CHROMIUM_ARGS)
        yield browser
        browser.close()


@pytest.fixture(scope="module")
def rocket_file(tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("upload") / "rocket.png"
    path.write_bytes(png_bytes(photo("rocket")))
    return path


@pytest.fixture(scope="module")
def zooming_policy(
    tmp_path_factory: pytest.TempPathFactory,
    magnifier: RunningService,
    tiny_model_dir: Path,
    rocket_file: Path,
) -> Iterator[RunningService]:
    """A policy with a key whose model zooms once, then answers "red", for the rocket."""
    tmp = tmp_path_factory.mktemp("viewer-browser")
    model = tmp / "model"
    script = Script(rocket_file.read_bytes(), QUESTION, ROUND1, ROUND2, "tags")
    build_scripted_model(tiny_model_dir, model, magnifier.url, script)
    env = {
        "MAGSRL_POLICY_MODEL": str(model),
        "MAGSRL_MAGNIFIER_URL": magnifier.url,
        "MAGSRL_TORCH_THREADS": "2",
    }
    service = start_service("policy", tmp, env, api_key=KEY)
    yield service
    service.supervisor.stop()


class Page:
    """A fresh browser context and page that records console errors and page errors."""

    def __init__(self, browser: Any) -> None:
        self.context = browser.new_context(viewport={"width": 1400, "height": 1000})
        self.page = self.context.new_page()
        self.page.set_default_timeout(TIMEOUT_MS)
        self.errors: list[str] = []
        self.page.on("console", self._console)
        self.page.on("pageerror", lambda exc: self.errors.append(f"pageerror: {exc}"))

    def _console(self, message: Any) -> None:
        if message.type == "error":
            self.errors.append(f"console: {message.text}")

    def close(self) -> None:
        self.context.close()


@pytest.fixture
def page(browser: Any) -> Iterator[Page]:
    wrapped = Page(browser)
    yield wrapped
    wrapped.close()


def inside(inner: dict[str, float], outer: dict[str, float], slack: float = 2.0) -> bool:
    return (
        inner["x"] >= outer["x"] - slack
        and inner["y"] >= outer["y"] - slack
        and inner["x"] + inner["width"] <= outer["x"] + outer["width"] + slack
        and inner["y"] + inner["height"] <= outer["y"] + outer["height"] + slack
    )


def check_boxes_on_image(page: Any, count: int) -> None:
    """Each .zoom-box lies inside the image, where its original-pixel box says it should."""
    boxes = page.locator("#overlay .zoom-box")
    assert boxes.count() == count
    image = page.locator("#stage-image").bounding_box()
    width = float(page.get_attribute("#stage", "data-width"))
    height = float(page.get_attribute("#stage", "data-height"))
    for i in range(count):
        rect = boxes.nth(i)
        drawn = rect.bounding_box()
        assert drawn and drawn["width"] > 2 and drawn["height"] > 2
        assert inside(drawn, image), (drawn, image)
        x = float(rect.get_attribute("x"))
        y = float(rect.get_attribute("y"))
        # The stroke straddles the edge, hence the tolerance.
        assert abs(drawn["x"] - (image["x"] + x / width * image["width"])) < 4
        assert abs(drawn["y"] - (image["y"] + y / height * image["height"])) < 4


def test_ask_with_key_upload_and_see_the_trace(
    page: Page, zooming_policy: RunningService, rocket_file: Path
) -> None:
    p = page.page
    p.goto(f"{zooming_policy.url}/")
    assert "needs a key" in p.text_content("#key-status")
    p.fill("#api-key", KEY)
    p.click("#key-save")
    p.wait_for_function("document.querySelector('#sample-select').options.length > 1")
    assert "key set" in p.text_content("#key-status")

    # A sample: its image comes through the API with the key, its question fills in.
    p.select_option("#sample-select", index=1)
    p.wait_for_function("document.querySelector('#image-preview').naturalWidth === 1024")
    assert p.input_value("#question")
    assert "gold answer" in p.text_content("#sample-gold")

    p.set_input_files("#image-file", str(rocket_file))
    p.wait_for_function("document.querySelector('#image-preview').naturalWidth === 640")
    assert p.input_value("#sample-select") == ""
    assert p.input_value("#question") == p.input_value("#options") == ""  # the sample's, gone
    p.fill("#question", QUESTION)
    p.click("#ask")
    p.wait_for_selector("#trace[data-state=done]")
    assert p.is_hidden("#error"), p.text_content("#error")

    assert p.text_content("#answer") == "red"
    rounds = p.locator("#rounds .round-text")
    assert rounds.count() == 2
    # Model text is shown as text: its tags appear verbatim, never parsed as HTML.
    assert "<zoom>" in rounds.nth(0).inner_text()
    assert p.locator("#rounds think, #rounds zoom").count() == 0

    check_boxes_on_image(p, 1)
    crops = p.locator("#crops img.crop-img")
    assert crops.count() == 3
    methods = [crops.nth(i).get_attribute("data-method") for i in range(3)]
    assert methods == ["sr", "bicubic", "crop"]
    assert p.evaluate(
        "[...document.querySelectorAll('#crops img.crop-img')]"
        ".every(img => img.complete && img.naturalWidth > 0)"
    )
    sizes = {(b["width"], b["height"]) for b in (crops.nth(i).bounding_box() for i in range(3))}
    assert len(sizes) == 1  # all three shown at the same size, to compare

    # model, magnifier, queue (the hf engine's batch queue) and overhead
    assert p.locator("#timing .seg").count() == 4
    for part in ("model", "magnifier", "queue", "overhead", "total"):
        assert "ms" in p.text_content(f"#timing [data-part={part}]")

    ARTIFACTS.mkdir(exist_ok=True)
    p.screenshot(path=str(ARTIFACTS / "viewer.png"), full_page=True)
    assert page.errors == []


def test_a_wrong_key_gets_a_clear_message(page: Page, zooming_policy: RunningService) -> None:
    p = page.page
    p.goto(f"{zooming_policy.url}/")
    p.fill("#api-key", "not-the-key")
    p.click("#key-save")
    p.wait_for_selector("#error:not([hidden])")
    assert "needs an API key, or the key is wrong" in p.text_content("#error")
    assert "401" in p.text_content("#error")
    # The browser logs the refused request itself; the page adds no error of its own.
    assert all("401" in e for e in page.errors), page.errors


# ---- results browsing ------------------------------------------------------------------
ARMS = {"sr": [True, True, False], "no-zoom": [True, False, False]}
IMAGE_SIZE = [640, 427]
# Results files are untrusted text: markup in them must show as text, never run.
INJECTED = '<img src="x" onerror="window.injected = true">'


def record(sample: int, arm: str, correct: bool, boxes: list[list[int]]) -> EvalRecord:
    zooms = [Zoom(box=b, crop=CropRef(box=b, width=256, height=256, method="sr")) for b in boxes]
    text = f"<think>look{INJECTED}<zoom>[[1, 2, 3, 4]]</zoom></think>"
    rounds = [Round(text=text, zooms=zooms)]
    rounds.append(Round(text="<answer>red</answer>"))
    return EvalRecord(
        key=f"s{sample}|{arm}",
        sample_id=f"s{sample}",
        arm=arm,
        dataset="synth",
        question=f"What colour is sign {sample}?",
        gold="red",
        answer="red" if correct else "blue",
        correct=correct,
        rounds=rounds if boxes else rounds[1:],
        zooms=len(boxes),
        image=f"/data/rocket-{sample}.png",
        image_size=IMAGE_SIZE,
        thumb=f"{THUMB_DIR}/s{sample}.jpg",
        latency_ms=1234.5,
        timing_ms={"total": 1200.0, "model": 900.0, "magnifier": 250.0, "overhead": 50.0},
    )


@pytest.fixture
def results_dir(tmp_path: Path) -> Path:
    """Six records (two arms), two malformed lines, and a thumbnail for sample 0 only."""
    out = tmp_path / "eval-run"
    (out / THUMB_DIR).mkdir(parents=True)
    lines = []
    for arm, outcomes in ARMS.items():
        for sample, correct in enumerate(outcomes):
            boxes = [[100, 50, 228, 178], [400, 300, 460, 360]] if arm == "sr" else []
            lines.append(record(sample, arm, correct, boxes).model_dump_json())
    lines.insert(2, "{this is not json")
    lines.insert(4, '{"json": "but not a record"}')
    (out / RESULTS_FILE).write_text("\n".join(lines) + "\n")
    Image.fromarray(photo("rocket")).resize((320, 214)).save(out / THUMB_DIR / "s0.jpg")
    return out


def listed(p: Any) -> int:
    return int(p.get_attribute("#results-count", "data-count"))


def test_browse_results_with_filters(
    page: Page, zooming_policy: RunningService, results_dir: Path
) -> None:
    p = page.page
    p.goto(f"{zooming_policy.url}/")
    p.click("#tab-results")
    p.set_input_files("#results-folder", str(results_dir))
    p.wait_for_selector("#record-list .record")
    assert listed(p) == 6
    assert "2 malformed lines skipped" in p.text_content("#results-summary")

    p.select_option("#filter-outcome", "right")
    assert listed(p) == 3
    p.select_option("#filter-outcome", "wrong")
    assert listed(p) == 3
    p.select_option("#filter-arm", "sr")
    assert listed(p) == 1
    p.select_option("#filter-outcome", "all")
    assert listed(p) == 3
    assert p.locator("#record-list .record").count() == 3

    p.click("#record-list .record[data-key='s0|sr']")
    p.wait_for_selector("#trace[data-state=done]")
    p.wait_for_function("document.querySelector('#stage-image').naturalWidth > 0")
    assert p.get_attribute("#stage-image", "src").startswith("blob:")  # the picked thumbnail
    check_boxes_on_image(p, 2)
    assert p.text_content("#answer") == "red"
    assert p.text_content("#qa .gold") == "red"
    assert p.locator("#qa .badge.right").count() == 1
    assert "ms" in p.text_content("#timing [data-part=total]")
    assert INJECTED in p.inner_text("#rounds")
    assert p.locator("#rounds img").count() == 0 and not p.evaluate("window.injected")
    ARTIFACTS.mkdir(exist_ok=True)
    p.screenshot(path=str(ARTIFACTS / "viewer-results.png"), full_page=True)

    # Sample 1 has no thumbnail among the files: a grey stand-in of the image's shape.
    p.click("#record-list .record[data-key='s1|sr']")
    p.wait_for_function("document.querySelector('#stage-image').src.startsWith('data:')")
    assert "was not among the picked files" in p.text_content("#image-note")
    check_boxes_on_image(p, 2)
    image = p.locator("#stage-image").bounding_box()
    assert abs(image["width"] / image["height"] - IMAGE_SIZE[0] / IMAGE_SIZE[1]) < 0.02
    assert page.errors == []


def test_results_from_picked_files(
    page: Page, zooming_policy: RunningService, results_dir: Path, tmp_path: Path
) -> None:
    """Files picked one by one (no folder): the thumbnail is matched by its name."""
    loose = tmp_path / "loose"
    loose.mkdir()
    shutil.copy(results_dir / RESULTS_FILE, loose / RESULTS_FILE)
    shutil.copy(results_dir / THUMB_DIR / "s0.jpg", loose / "s0.jpg")
    p = page.page
    p.goto(f"{zooming_policy.url}/")
    p.click("#tab-results")
    p.set_input_files("#results-files", [str(loose / RESULTS_FILE), str(loose / "s0.jpg")])
    p.wait_for_selector("#record-list .record")
    p.click("#record-list .record[data-key='s0|sr']")
    p.wait_for_function("document.querySelector('#stage-image').src.startsWith('blob:')")
    check_boxes_on_image(p, 2)
    assert page.errors == []
