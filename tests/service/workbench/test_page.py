"""index.html in a real headless browser (Debian's chromium): every image renders and
nothing lands on the console or in the page's error events."""

from __future__ import annotations

import json
import re
import shutil
import subprocess
from pathlib import Path
from typing import Any

import pytest

from tests.service.workbench.conftest import CASES, Built

INSTALL_HINT = "chromium is missing: run deploy/tools/install.sh (make tools)"

# Injected at the top of <head> of a copy of the page: records resource and script
# errors and console.error calls, and after load writes each image's state to the DOM.
PROBE = """<script>
const wbErrors = [];
window.addEventListener('error', e => wbErrors.push(
  String(e.message || (e.target && (e.target.src || e.target.href)) || e.type)), true);
const wbConsole = console.error;
console.error = (...a) => { wbErrors.push(a.join(' ')); wbConsole(...a); };
window.addEventListener('load', () => {
  const images = [...document.images].map(i => ({
    src: i.getAttribute('src'), ok: i.complete && i.naturalWidth > 0, width: i.naturalWidth}));
  const out = document.createElement('pre');
  out.id = 'wb-result';
  out.textContent = JSON.stringify({images: images, errors: wbErrors});
  document.body.appendChild(out);
});
</script>"""


def render(folder: Path) -> dict[str, Any]:
    """Load ``folder/index.html`` in headless chromium; the probe's findings."""
    chromium = shutil.which("chromium")
    if chromium is None:
        pytest.fail(INSTALL_HINT)
    page = (folder / "index.html").read_text()
    probe = folder / "probe.html"
    probe.write_text(page.replace("<head>", "<head>" + PROBE, 1))
    done = subprocess.run(
        [
            chromium, "--headless", "--no-sandbox", "--disable-gpu", "--no-first-run",
            "--enable-logging=stderr", "--v=0",
            f"--user-data-dir={folder / '.chromium'}", "--virtual-time-budget=10000",
            "--dump-dom", probe.as_uri(),
        ],
        capture_output=True, text=True, timeout=120, check=False,
    )  # fmt: skip
    found = re.search(r'<pre id="wb-result">(.*?)</pre>', done.stdout, re.S)
    assert found, f"no probe result (exit {done.returncode}): {done.stderr[-2000:]}"
    result: dict[str, Any] = json.loads(found.group(1).replace("&quot;", '"'))
    result["console"] = [line for line in done.stderr.splitlines() if ":CONSOLE" in line]
    return result


@pytest.mark.parametrize("name", list(CASES))
def test_every_image_renders_and_the_console_is_clean(reports: dict[str, Built], name: str) -> None:
    built = reports[name]
    result = render(built.folder)
    assert sorted(i["src"] for i in result["images"]) == sorted(built.report.images)
    assert len(result["images"]) >= 5
    assert all(i["ok"] and i["width"] > 100 for i in result["images"]), result["images"]
    assert result["errors"] == []
    assert result["console"] == []


def test_the_browser_check_sees_console_messages(tmp_path: Path) -> None:
    """The console check can fail too: a page that logs an error is caught twice."""
    (tmp_path / "index.html").write_text(
        '<!DOCTYPE html><html><head></head><body><script>console.error("boom")</script>'
        "</body></html>"
    )
    result = render(tmp_path)
    assert result["errors"] == ["boom"]
    assert any("boom" in line for line in result["console"])


def test_the_browser_check_sees_a_missing_image(reports: dict[str, Built], tmp_path: Path) -> None:
    """The check itself can fail: a page whose plot file is gone is caught."""
    folder = tmp_path / "broken"
    shutil.copytree(reports["diabetes"].folder, folder)
    (folder / "residuals.png").unlink()
    result = render(folder)
    broken = [i["src"] for i in result["images"] if not i["ok"]]
    assert broken == ["residuals.png"]
    assert any("residuals.png" in e for e in result["errors"])
