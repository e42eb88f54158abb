"""`sparsec analyze`'s reports in a real headless browser: Debian's chromium, driven by its
command line (`--dump-dom`, `--screenshot`, console messages on stderr with
`--enable-logging=stderr`), which .ci/run installs. For each sample model and a 1-layer BERT
(measured, so that every chart is drawn): the page logs nothing to the console (no script
error, no blocked resource, no Content-Security-Policy violation), every image decodes
(naturalWidth > 0), and a screenshot shows a page, not a blank one. A control page checks that
this harness does see a console message and a broken image."""

from __future__ import annotations

import html
import importlib.util
import json
import os
import re
import shutil
import subprocess
from pathlib import Path

import onnx
import pytest

from sparsec.cli import main

ROOT = Path(__file__).resolve().parents[2]
SAMPLES = sorted((ROOT / "samples").glob("*.onnx"))
CHROMIUM = next(filter(None, map(shutil.which, ("chromium", "chromium-browser",
                                                "google-chrome"))), None)
CSP = "default-src 'none';"
# Run by the browser on a copy of the page whose policy lets inline scripts run (the report's
# forbids them): once every image has loaded, it lists each image's decoded width.
PROBE = """<script>window.addEventListener("load", () => {
  const probe = document.createElement("pre");
  probe.id = "probe";
  probe.textContent = JSON.stringify(Array.from(document.images, i => [i.alt, i.naturalWidth]));
  document.body.appendChild(probe);
});</script>"""


@pytest.fixture(scope="module")
def browser() -> str:
    if CHROMIUM is None:
        if os.environ.get("CI"):
            pytest.fail("chromium is missing: .ci/run installs it (apt-get install chromium)")
        pytest.skip("no chromium on this host (apt-get install chromium; .ci/run installs it)")
    return CHROMIUM


def chromium(browser: str, profile: Path, *args: str) -> subprocess.CompletedProcess:
    return subprocess.run([browser, "--headless", "--no-sandbox", "--disable-gpu",
                           "--hide-scrollbars", "--no-first-run", "--disable-extensions",
                           f"--user-data-dir={profile}", "--enable-logging=stderr", "--v=0",
                           "--virtual-time-budget=10000", *args],
                          capture_output=True, text=True, timeout=180, check=True)


def console_messages(stderr: str) -> list[str]:
    return [line for line in stderr.splitlines() if ":CONSOLE" in line]


def image_widths(browser: str, profile: Path, page: Path) -> list[list]:
    """[alt, naturalWidth] of every image, as the browser decoded them."""
    text = page.read_text(encoding="utf-8")
    assert CSP in text
    probed = page.with_name(page.stem + "-probed.html")
    probed.write_text(text.replace(CSP, CSP + " script-src 'unsafe-inline';", 1)
                      .replace("</body>", PROBE + "</body>", 1), encoding="utf-8")
    dom = chromium(browser, profile, "--dump-dom", probed.as_uri()).stdout
    found = re.search(r'<pre id="probe">(.*?)</pre>', dom, re.S)
    assert found, "the probe did not run"
    return json.loads(html.unescape(found.group(1)))


def tiny_bert_module():
    spec = importlib.util.spec_from_file_location("tiny_bert", ROOT / "samples" / "tiny_bert.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.fixture(scope="module")
def reports(tmp_path_factory, cache_dir) -> dict[str, Path]:
    """The reports as `sparsec analyze` writes them: each sample's, and a 1-layer BERT's with
    --measure (its predicted-against-measured chart is drawn only then)."""
    folder = tmp_path_factory.mktemp("reports")
    bert = folder / "bert_1_layer.onnx"
    onnx.save(tiny_bert_module().tiny_bert(layers=1), bert)
    built = {}
    for model, extra in [(path, []) for path in SAMPLES] + [(bert, ["--measure", "--time",
                                                                   "0.3"])]:
        output = folder / f"{model.stem}.html"
        assert main(["analyze", str(model), "-o", str(output), "--cache-dir", str(cache_dir),
                     *extra]) == 0
        built[model.stem] = output
    return built


REPORTS = [path.stem for path in SAMPLES] + ["bert_1_layer"]


@pytest.mark.parametrize("name", REPORTS)
def test_report_loads_without_console_messages(name, reports, browser, tmp_path):
    done = chromium(browser, tmp_path / "profile", "--dump-dom", reports[name].as_uri())
    assert "sparsec analyze" in done.stdout
    assert console_messages(done.stderr) == []


@pytest.mark.parametrize("name", REPORTS)
def test_every_image_decodes(name, reports, browser, tmp_path):
    widths = image_widths(browser, tmp_path / "profile", reports[name])
    assert len(widths) == reports[name].read_text(encoding="utf-8").count("<img ")
    assert len(widths) >= 3
    assert [alt for alt, width in widths if width <= 0] == []


@pytest.mark.parametrize("name", REPORTS)
def test_screenshot_shows_a_page(name, reports, browser, tmp_path):
    from PIL import Image  # matplotlib's own dependency

    shot = tmp_path / "shot.png"
    chromium(browser, tmp_path / "profile", "--window-size=1280,2400",
             f"--screenshot={shot}", reports[name].as_uri())
    with Image.open(shot) as image:
        pixels = image.convert("RGB")
        colours = pixels.getcolors(maxcolors=1 << 20)
    assert colours is not None
    assert len(colours) >= 64, "a page of text and charts has many colours (anti-aliasing)"
    white = sum(count for count, rgb in colours if min(rgb) >= 250)
    assert white / (pixels.width * pixels.height) < 0.97, "the page is (almost) blank"


def test_the_harness_sees_console_messages_and_broken_images(browser, tmp_path):
    """A page under the report's policy with an inline script (which the policy refuses,
    saying so on the console) and an image that does not decode."""
    page = tmp_path / "control.html"
    page.write_text(f"""<!DOCTYPE html><html><head>
<meta http-equiv="Content-Security-Policy" content="{CSP} img-src data:; style-src 'unsafe-inline'">
</head><body><p>control</p><img alt="broken" src="data:image/png;base64,AAAA">
<script>document.title = "ran";</script></body></html>""", encoding="utf-8")
    done = chromium(browser, tmp_path / "profile", "--dump-dom", page.as_uri())
    assert console_messages(done.stderr), done.stderr
    assert image_widths(browser, tmp_path / "profile", page) == [["broken", 0]]
