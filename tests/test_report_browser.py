"""A rendered report opened in a real browser (headless Debian Chromium): every figure loads
under the report's own Content-Security-Policy (no request leaves the page), the page paints
text and figures, and the verdict line is painted first, on the first screen. CI installs
chromium in .ci/run."""

from __future__ import annotations

import html
import json
import re
import shutil
import subprocess
from pathlib import Path

import numpy as np
import pytest
import torch

from unmemorize.reporting.plots import BEFORE_COLOR
from unmemorize.reporting.report import write_report
from unmemorize.config import UnlearnConfig
from unmemorize.recipes.unlearn import unlearn

CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")
pytestmark = pytest.mark.skipif(
    CHROMIUM is None, reason="chromium is not installed (apt-get install chromium; CI installs it in .ci/run)"
)

# Appended to a test copy of the page: once everything has loaded, write into the DOM how many
# images decoded. The copy's policy allows this one script by nonce and is otherwise the same.
CHECK = """<script nonce="imgcheck">
window.addEventListener("load", () => {
  const images = Array.from(document.images);
  const loaded = images.filter(img => img.complete && img.naturalWidth > 0 && img.naturalHeight > 0);
  const out = document.createElement("pre");
  out.id = "img-check";
  out.textContent = "images " + loaded.length + "/" + images.length;
  document.body.appendChild(out);
});
</script>
"""


def chromium(profile: Path, *args: str) -> subprocess.CompletedProcess:
    # --no-sandbox: CI and this test run as root, where Chromium's sandbox refuses to start.
    return subprocess.run(
        [CHROMIUM, "--headless=new", "--no-sandbox", "--disable-gpu", "--no-first-run",
         "--disable-extensions", "--hide-scrollbars", f"--user-data-dir={profile}", *args],
        capture_output=True, text=True, timeout=120,
    )


@pytest.fixture(scope="module")
def rendered(tiny_models, tmp_path_factory) -> Path:
    """An unlearning run's report with every kind of figure: per-sample memorization, training
    curves, the evaluation's per-sample plot and the demo's bars."""
    root = tmp_path_factory.mktemp("browser")
    forget = root / "forget.jsonl"
    forget.write_text("\n".join(json.dumps({"text": t}) for t in [
        "Alice Johnson lives at 42 Baker Street in London.", "Contact mary.jones@example.com today."]))
    run = root / "run"
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # module fixtures are set up before the per-test one-thread fixture
    try:
        unlearn(UnlearnConfig(model=str(tiny_models["llama"]), forget=str(forget), out=str(run), max_steps=2,
                              batch_size=1, el_n=[2]))
    finally:
        torch.set_num_threads(threads)
    memo = lambda ma: {"forget": {"ma": ma}, "reference": {"ma": 0.4}, "forget_samples": [{"ma": ma}, {"ma": ma / 2}]}  # noqa: E731
    (run / "eval.json").write_text(json.dumps({
        "config": {}, "models": {"original": "base", "unlearned": str(run)}, "judge": "base",
        "results": {"original": {"memorization": memo(0.6)}, "unlearned": {"memorization": memo(0.2)}},
        "timings_s": {}, "wall_time_s": 1.0,
    }))
    (run / "demo.json").write_text(json.dumps({
        "model": "tiny", "records": 4, "forgotten_customers": ["c1"], "kept_customers": ["c2"],
        "leak_before": [], "leak_after": [],
        "summary": {"pii_leaked_before": 4, "pii_leaked_after": 0, "pii_total": 4,
                    "kept_pii_leaked_before": 3, "kept_pii_leaked_after": 3},
        "timings_s": {}, "passed": True, "synthetic": True,
    }))
    write_report(run)
    return run / "report.html"


def test_every_figure_loads_under_the_reports_own_policy(rendered, tmp_path):
    page = rendered.read_text()
    images = len(re.findall(r"<img ", page))
    assert images == 4
    policy = re.search(r'http-equiv="Content-Security-Policy" content="([^"]+)"', page).group(1)
    checked = page.replace(policy, policy + "; script-src 'nonce-imgcheck'").replace("</body>", CHECK + "</body>")
    copy = rendered.with_name("report-check.html")
    copy.write_text(checked)
    result = chromium(tmp_path / "profile", "--virtual-time-budget=10000", "--dump-dom", copy.as_uri())
    assert result.returncode == 0, result.stderr[-2000:]
    found = re.search(r'<pre id="img-check">images (\d+)/(\d+)</pre>', result.stdout)
    assert found, result.stdout[-2000:]
    assert (int(found.group(1)), int(found.group(2))) == (images, images)


def test_the_page_paints_text_and_figures(rendered, tmp_path):
    from PIL import Image

    screenshot = tmp_path / "report.png"
    result = chromium(tmp_path / "profile", f"--screenshot={screenshot}", "--window-size=1200,5000",
                      rendered.as_uri())
    assert result.returncode == 0 and screenshot.is_file(), result.stderr[-2000:]
    image = Image.open(screenshot).convert("RGB")
    assert image.size == (1200, 5000)
    gray = image.convert("L").histogram()
    total = sum(gray)
    assert sum(gray[:100]) / total > 0.005  # dark text and lines
    assert sum(gray[200:]) / total > 0.5  # a light page
    assert len(image.getcolors(maxcolors=1 << 20)) > 200  # figures, not just text
    # The figures are painted: the demo's solid "before" bars alone cover thousands of pixels of
    # a grey no CSS rule uses (antialiased text comes close to it in a few hundred at most).
    before = tuple(int(BEFORE_COLOR[i : i + 2], 16) for i in (1, 3, 5))
    close = int((np.abs(np.asarray(image, dtype=int) - before).max(axis=2) <= 4).sum())
    assert close > 5000


# Appended to a test copy of the page: where the verdict line is drawn, and what comes before it.
LOCATE_VERDICT = """<script nonce="verdictcheck">
window.addEventListener("load", () => {
  const verdict = document.querySelector("p.verdict");
  const out = document.createElement("pre");
  out.id = "verdict-check";
  out.textContent = verdict ? JSON.stringify({box: verdict.getBoundingClientRect(), text: verdict.textContent,
      after: verdict.previousElementSibling.tagName, color: getComputedStyle(verdict).color}) : "none";
  document.body.appendChild(out);
});
</script>
"""
FOLD = (1200, 800)  # the window: what a reader sees without scrolling


def verdict_pixels(chromium_profile: Path, page: Path, color: tuple[int, int, int]) -> np.ndarray:
    """A screenshot of the first screen of ``page``: a mask of the pixels of the verdict's colour."""
    from PIL import Image

    screenshot = page.with_suffix(".png")
    result = chromium(chromium_profile, f"--screenshot={screenshot}", f"--window-size={FOLD[0]},{FOLD[1]}",
                      page.as_uri())
    assert result.returncode == 0 and screenshot.is_file(), result.stderr[-2000:]
    image = np.asarray(Image.open(screenshot).convert("RGB"), dtype=int)
    assert image.shape == (FOLD[1], FOLD[0], 3)
    return np.abs(image - color).max(axis=2) <= 8


def test_the_verdict_line_is_painted_at_the_top(rendered, tmp_path):
    from unmemorize.reporting.report import VERDICT_COLORS
    from unmemorize.reporting.verdict import unlearning_verdict

    run = rendered.parent
    verdict = unlearning_verdict(json.loads((run / "metrics.json").read_text()),
                                 json.loads((run / "eval.json").read_text()))
    color = tuple(int(VERDICT_COLORS[verdict["status"]][i : i + 2], 16) for i in (1, 3, 5))
    page = rendered.read_text()
    policy = re.search(r'http-equiv="Content-Security-Policy" content="([^"]+)"', page).group(1)
    # The DOM: the verdict is the element right after the title, on the first screen, in its colour.
    located = rendered.with_name("report-verdict.html")
    located.write_text(page.replace(policy, policy + "; script-src 'nonce-verdictcheck'")
                       .replace("</body>", LOCATE_VERDICT + "</body>"))
    result = chromium(tmp_path / "profile", f"--window-size={FOLD[0]},{FOLD[1]}", "--virtual-time-budget=10000",
                      "--dump-dom", located.as_uri())
    assert result.returncode == 0, result.stderr[-2000:]
    found = json.loads(html.unescape(re.search(r'<pre id="verdict-check">(.*?)</pre>', result.stdout, re.S).group(1)))
    box = found["box"]
    assert found["text"] == verdict["line"] and found["after"] == "H1"
    assert found["color"] == "rgb({}, {}, {})".format(*color)
    assert 0 < box["top"] < 200 and box["bottom"] < FOLD[1] and box["height"] >= 20
    # The screenshot: the verdict's bar and text are painted there, in its colour, and nowhere else
    # on the first screen.
    mask = verdict_pixels(tmp_path / "profile", rendered, color)
    rows, columns = np.nonzero(mask)
    assert mask.sum() > 8 * box["height"]  # at least the 8-pixel bar the whole height of the line
    assert rows.min() >= box["top"] - 1 and rows.max() <= box["bottom"] + 1
    assert columns.min() >= box["left"] - 1 and columns.max() <= box["right"] + 1
    # The same check on the page with the verdict moved to the end finds nothing on the first screen.
    line = re.search(r'<p class="verdict[^"]*">.*?</p>\n', page).group(0)
    moved = rendered.with_name("report-verdict-last.html")
    moved.write_text(page.replace(line, "").replace("</body>", line + "</body>"))
    assert verdict_pixels(tmp_path / "profile", moved, color).sum() < 10
