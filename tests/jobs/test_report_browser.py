"""The HTML report of a scoring run opened in a real headless Chromium: the pages render (a screenshot that
is not blank), what a person sees holds the titles, a flagged bar's reason and the error entry, and the
index table sorts when a header is clicked. Chromium comes from `make test` (the Makefile installs the
Debian package); outside CI (.ci/run sets PIANOEVAL_REQUIRE_BROWSER, CI systems set CI) the tests are skipped
when it is missing."""
from __future__ import annotations

import html
import io
import os
import re
import shutil
import subprocess
from pathlib import Path

import numpy as np
import pytest

from pipelines.scoring import report as R
from tests.pipelines.scoring.test_report import EVIL_ID, FLAG_REASON, ERROR_MESSAGE, make_run, report_rows

WINDOW = (1200, 1600)             # px, the browser window of the screenshots
REQUIRED_IN = "PIANOEVAL_REQUIRE_BROWSER"   # set by .ci/run: no skipping in CI


def _chromium() -> str:
    found = shutil.which("chromium") or ("/usr/bin/chromium" if Path("/usr/bin/chromium").exists() else None)
    if found:
        return found
    if os.environ.get("CI") or os.environ.get(REQUIRED_IN):
        pytest.fail("chromium is not installed (make test installs it as root: apt-get install -y chromium)")
    pytest.skip("chromium is not installed (apt-get install -y chromium); CI runs this test")


def _browse(page: Path, profile: Path, *mode: str) -> subprocess.CompletedProcess:
    """Run headless Chromium on a local page, offline, with a throwaway profile."""
    command = [_chromium(), "--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
               "--disable-background-networking", "--disable-component-update", "--disable-sync",
               f"--user-data-dir={profile}", f"--window-size={WINDOW[0]},{WINDOW[1]}", *mode, page.as_uri()]
    result = subprocess.run(command, capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr[-2000:]
    return result


def _visible_text(dom: str) -> str:
    """The text of a rendered DOM, without scripts and styles, entities decoded, spaces collapsed."""
    body = re.sub(r"<(script|style)\b[^>]*>.*?</\1>", " ", dom, flags=re.S)
    return " ".join(html.unescape(re.sub(r"<[^>]+>", " ", body)).split())


@pytest.fixture(scope="module")
def report_dir(tmp_path_factory) -> Path:
    _chromium()
    out = tmp_path_factory.mktemp("report") / "scores"
    make_run(str(out))
    return Path(R.write_run_report(str(out))).parent


def _assert_screenshot_not_blank(path: Path) -> None:
    from PIL import Image

    assert path.exists() and path.stat().st_size > 0
    image = Image.open(io.BytesIO(path.read_bytes())).convert("RGB")
    assert image.size == WINDOW
    pixels = np.asarray(image).reshape(-1, 3)
    colours = len(np.unique(pixels[:: 7], axis=0))
    assert pixels.std() > 10 and colours > 50, (pixels.std(), colours)


@pytest.mark.parametrize("which", ["index", "recording"])
def test_pages_render(report_dir, tmp_path, which):
    page = report_dir / (R.INDEX if which == "index" else R.page_name("with score/scale one"))
    screenshot = tmp_path / "shot.png"
    _browse(page, tmp_path / "profile", f"--screenshot={screenshot}")
    _assert_screenshot_not_blank(screenshot)


def test_what_a_person_sees(report_dir, tmp_path):
    index_dom = _browse(report_dir / R.INDEX, tmp_path / "profile", "--dump-dom").stdout
    seen = _visible_text(index_dom)
    assert "Scoring run 20261126T120000.000Z-abc123" in seen
    assert "Errors (1)" in seen and "bad <file>" in seen and ERROR_MESSAGE in seen
    assert EVIL_ID in seen and "<script>alert" not in index_dom          # shown as text, never run
    page_dom = _browse(report_dir / R.page_name("with score/scale one"), tmp_path / "profile", "--dump-dom").stdout
    seen = _visible_text(page_dom)
    assert "with score/scale one" in seen and "Practise next:" in seen and FLAG_REASON in seen
    assert "uncertain (σ 28)" in seen
    evil_dom = _browse(report_dir / R.page_name(EVIL_ID), tmp_path / "profile", "--dump-dom").stdout
    assert EVIL_ID in _visible_text(evil_dom)


def test_clicking_a_header_sorts_the_table(report_dir, tmp_path):
    """A copy of the index that clicks the Aggregate header once or twice after loading (what a person does)."""
    index = (report_dir / R.INDEX).read_text(encoding="utf-8")
    rows = {r["recording_id"]: r["aggregate"] for r in report_rows() if r["status"] == "ok"}
    ascending = sorted(rows, key=rows.get)
    for clicks, expected in ((1, ascending), (2, ascending[::-1])):
        script = ("<script>var th = Array.prototype.find.call(document.querySelectorAll('#recordings th'), "
                  "function (h) { return h.textContent === 'Aggregate'; });"
                  + "th.click();" * clicks + "</script>")
        page = report_dir / f"clicked-{clicks}.html"
        page.write_text(index.replace("</body>", script + "</body>"), encoding="utf-8")
        dom = _browse(page, tmp_path / "profile", "--dump-dom").stdout
        body = dom[dom.index("<tbody>"):dom.index("</tbody>")]
        order = [html.unescape(m) for m in re.findall(r'<td><a href="[^"]+">([^<]*)</a></td>', body)]
        assert order == expected + ["bad <file>"], order                # no aggregate: last either way
