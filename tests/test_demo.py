"""The Gradio Space: started with `samclip demo` on 127.0.0.1 (a tiny merged model through $SAMCLIP_MODEL),
each tab answered through gradio_client, bad inputs, and a real headless-Chromium run."""

import os
import shutil
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import numpy as np
import pytest
from gradio_client import Client, handle_file
from gradio_client.exceptions import AppError
from PIL import Image

ROOT = Path(__file__).resolve().parents[1]
ARTIFACTS = ROOT / "test-artifacts"
MAX_PIXELS = 300 * 300  # a low limit so that the too-large upload stays small
CHROMIUM_FLAGS = [
    "--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
    "--disable-background-networking", "--disable-component-update", "--disable-sync",
]


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@pytest.fixture(scope="module")
def app_module():
    from transformers_samclip.hub.cli import load_demo_app

    return load_demo_app()


@pytest.fixture(scope="module")
def model_dir(saved_tiny_model):
    return saved_tiny_model


@pytest.fixture(scope="module")
def server(model_dir, tmp_path_factory):
    """`samclip demo` in a subprocess on a free port; yields its URL."""
    port = free_port()
    env = {**os.environ, "SAMCLIP_MODEL": str(model_dir), "SAMCLIP_DEMO_MAX_PIXELS": str(MAX_PIXELS),
           "HF_HUB_OFFLINE": "1", "GRADIO_ANALYTICS_ENABLED": "False", "OMP_NUM_THREADS": "1"}
    log = tmp_path_factory.mktemp("demo-log") / "demo.log"
    with open(log, "w") as handle:
        process = subprocess.Popen([str(Path(sys.executable).with_name("samclip")), "demo", "--port", str(port)],
                                   env=env, stdout=handle, stderr=subprocess.STDOUT, cwd=ROOT)
    url = f"http://127.0.0.1:{port}/"
    deadline = time.monotonic() + 180
    while True:
        try:
            urllib.request.urlopen(url, timeout=2)
            break
        except OSError:
            if process.poll() is not None or time.monotonic() > deadline:
                process.kill()
                pytest.fail(f"the demo did not start:\n{log.read_text()[-3000:]}")
            time.sleep(0.5)
    yield url
    process.terminate()
    process.wait(timeout=30)


@pytest.fixture(scope="module")
def client(server):
    return Client(server, verbose=False)


@pytest.fixture(scope="module")
def image_path(tmp_path_factory):
    rng = np.random.default_rng(0)
    array = (rng.random((60, 90, 3)) * 255).astype(np.uint8)
    array[10:40, 20:60] = [250, 30, 30]
    path = tmp_path_factory.mktemp("images") / "image.png"
    Image.fromarray(array).save(path)
    return path


def test_classification_tab_ranks_the_labels(client, image_path):
    result = client.predict(handle_file(image_path), "cat, red box, dog", api_name="/classify")
    confidences = result["confidences"]
    assert {c["label"] for c in confidences} == {"cat", "red box", "dog"}
    scores = [c["confidence"] for c in confidences]
    assert scores == sorted(scores, reverse=True) and abs(sum(scores) - 1) < 1e-4
    assert result["label"] == confidences[0]["label"]


def test_segmentation_tab_returns_an_overlay_and_iou(client, image_path):
    overlay, iou = client.predict(handle_file(image_path), "+ 40, 25\n- 5, 5\nbox 20, 10, 60, 40", api_name="/segment")
    overlay = Image.open(overlay)
    assert overlay.size == (90, 60) and overlay.mode == "RGB"
    assert not np.array_equal(np.asarray(overlay), np.asarray(Image.open(image_path)))  # mask and prompts drawn
    assert isinstance(iou, float)


@pytest.mark.parametrize("refine", [False, True])
def test_text_to_mask_tab_returns_overlay_and_legend(client, image_path, refine):
    overlay, legend = client.predict(handle_file(image_path), "red box, grass", refine, -1, api_name="/segment_text")
    assert Image.open(overlay).size == (90, 60)
    assert "red box" in legend and "grass" in legend and "%" in legend


def test_label_everything_tab_returns_instances_and_their_list(client, image_path):
    overlay, listing = client.predict(handle_file(image_path), "red box, grass", -1, api_name="/label_everything")
    assert Image.open(overlay).size == (90, 60)
    assert "samclip-instances" in listing and ("red box" in listing or "grass" in listing or "No object" in listing)


def test_label_everything_finds_the_items_of_a_shipped_example(app_module):
    """The shipped mosaic model on the Space's own example mosaic: coloured, captioned instances whose labels are
    mosaic classes, with the list naming each one."""
    from transformers_samclip.hub.export import SHIPPED_MOSAIC_MODEL_DIR, load_samclip

    loaded = load_samclip(SHIPPED_MOSAIC_MODEL_DIR)
    demo = app_module.SamClipDemo(loaded.model, loaded.processor, "shipped")
    image = Image.open(app_module.EXAMPLES_DIR / "mosaic-0.png")
    overlay, listing = demo.label_everything(image, app_module.FASHION_LABELS, -1.0)
    assert overlay.size == image.size and not np.array_equal(np.asarray(overlay), np.asarray(image.convert("RGB")))
    names = [name.strip() for name in app_module.FASHION_LABELS.split(",")]
    assert listing.count("<li") >= 2 and all(any(name in item for name in names) for item in listing.split("<li")[1:])


@pytest.mark.parametrize(
    ("api_name", "arguments", "message"),
    [
        ("/classify", (" , ",), "Give at least one label"),
        ("/classify", (", ".join(f"class {i}" for i in range(21)),), "21 labels given; the limit is 20"),
        ("/segment_text", ("cat, cat", False, -1), "Labels repeat: cat"),
        ("/label_everything", (" , ", -1), "Give at least one label"),
        ("/segment", ("+ 95, 10",), "(95, 10) is outside the 90x60 image"),
        ("/segment", ("box 20, 10, 20, 40",), "the box has zero area"),
        ("/segment", ("box 20, 10",), "click its opposite corner"),
        ("/segment", ("",), "Add a positive point or a box"),
    ],
)
def test_bad_inputs_get_a_clear_message(client, image_path, api_name, arguments, message):
    with pytest.raises(AppError, match=message.replace("(", r"\(").replace(")", r"\)")):
        client.predict(handle_file(image_path), *arguments, api_name=api_name)


def test_an_upload_above_the_pixel_limit_is_refused(client, tmp_path):
    path = tmp_path / "large.png"
    Image.new("RGB", (400, 300), "white").save(path)
    with pytest.raises(AppError, match="400x300 = 120,000 pixels; the limit is 90,000"):
        client.predict(handle_file(path), "cat", api_name="/classify")


def test_clicks_become_prompt_lines(app_module):
    import gradio as gr

    def click(prompts, mode, x, y):
        return app_module.add_click(prompts, mode, gr.SelectData(None, {"index": [x, y], "value": None}))

    positive, negative, box = app_module.PROMPT_MODES
    prompts = click("", positive, 10, 12)
    prompts = click(prompts, negative, 3, 4)
    prompts = click(prompts, box, 5, 6)
    assert prompts == "+ 10, 12\n- 3, 4\nbox 5, 6"
    prompts = click(prompts, box, 30, 20)
    assert prompts == "+ 10, 12\n- 3, 4\nbox 5, 6, 30, 20"
    parsed = app_module.parse_prompts(prompts, 40, 40)
    assert parsed.points == [(10, 12), (3, 4)] and parsed.point_labels == [1, 0] and parsed.box == (5, 6, 30, 20)
    assert click(prompts, box, 1, 1).endswith("- 3, 4\nbox 1, 1")  # a new box replaces the old one


def visible(locator):
    """The first visible match (every tab keeps its components in the page)."""
    return locator.locator("visible=true").first


def load_example(page, row: int) -> None:
    """Click an example row of the open tab and wait until its image is in the input."""
    visible(page.get_by_test_id(f"dataset-cell-{row}-0")).click()
    visible(page.get_by_test_id("image").locator("img")).wait_for(timeout=30_000)


@pytest.mark.slow
def test_the_page_runs_an_example_in_chromium(server):
    chromium = shutil.which("chromium") or "/usr/bin/chromium"
    if not Path(chromium).exists():
        pytest.skip("Debian chromium is not installed (./bootstrap test installs it where apt-get exists)")
    from playwright.sync_api import sync_playwright

    ARTIFACTS.mkdir(exist_ok=True)
    with sync_playwright() as driver:
        browser = driver.chromium.launch(executable_path=chromium, args=CHROMIUM_FLAGS)
        page = browser.new_page(viewport={"width": 1280, "height": 1100})
        page.goto(server)
        page.get_by_role("tab", name="Zero-shot classification").wait_for(timeout=60_000)
        # The first example (mosaic-0 with the ten Fashion-MNIST labels): ranked labels appear.
        load_example(page, row=0)
        visible(page.get_by_role("button", name="Classify")).click()
        visible(page.get_by_test_id("label").get_by_text("Sneaker")).wait_for(timeout=60_000)
        page.screenshot(path=str(ARTIFACTS / "demo-classification.png"), full_page=True)

        # A click on the image adds a positive point at that pixel of the 128 px mosaic, however it is scaled.
        page.get_by_role("tab", name="Promptable segmentation").click()
        load_example(page, row=0)
        prompts = visible(page.get_by_label("Prompts"))
        picture = visible(page.get_by_test_id("image").locator("img"))
        box, natural = picture.bounding_box(), picture.evaluate("img => [img.naturalWidth, img.naturalHeight]")
        # Gradio shows the image centred with object-fit: scale-down (never enlarged).
        scale = min(1.0, box["width"] / natural[0], box["height"] / natural[1])
        picture.click(position={"x": (box["width"] - natural[0] * scale) / 2 + 0.7 * natural[0] * scale,
                                "y": (box["height"] - natural[1] * scale) / 2 + 0.5 * natural[1] * scale})
        page.wait_for_function("(el) => el.value.split('\\n').length == 2", arg=prompts.element_handle(), timeout=30_000)
        x, y = (int(v) for v in prompts.input_value().splitlines()[1].removeprefix("+ ").split(","))
        assert abs(x - 0.7 * 128) <= 3 and abs(y - 0.5 * 128) <= 3
        visible(page.get_by_role("button", name="Segment")).click()
        page.wait_for_function("() => [...document.querySelectorAll('input')].some(i => i.offsetParent && "
                               "i.type === 'number' && i.value !== '')", timeout=60_000)
        page.screenshot(path=str(ARTIFACTS / "demo-segmentation.png"), full_page=True)

        # Text-to-mask: the SAM-refined mosaic example; the legend lists its class names.
        page.get_by_role("tab", name="Text-to-mask segmentation").click()
        load_example(page, row=1)
        visible(page.get_by_role("button", name="Segment")).click()
        legend = visible(page.locator(".samclip-legend"))
        legend.wait_for(timeout=60_000)
        assert all(name in legend.inner_text() for name in ("Bag", "Sandal", "Coat"))
        page.screenshot(path=str(ARTIFACTS / "demo-text-to-mask.png"), full_page=True)
        browser.close()
    assert (ARTIFACTS / "demo-classification.png").stat().st_size > 10_000
