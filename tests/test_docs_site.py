"""The docs site as a reader sees it: built strictly, served over loopback and opened in headless
Chromium, where the pipeline picture, the benchmark charts and the API reference must show.
The charts' hook is checked on its own too: a chart is drawn from its table, and a marker
without a table of ratios fails the build instead of drawing nothing."""

from __future__ import annotations

import functools
import http.server
import importlib.util
import subprocess
import sys
import threading
from collections.abc import Iterator
from pathlib import Path
from types import ModuleType
from typing import Any

import pytest

from asgi_micro import service as service_module
from tests.browser import chromium, require_chromium
from tests.test_docs import ROOT

PNG = b"\x89PNG\r\n\x1a\n"


@functools.cache
def load_hook() -> ModuleType:
    """docs/hooks/charts.py, the module mkdocs loads as a hook (registered in ``sys.modules``
    as mkdocs does, which its dataclasses need)."""
    name = "docs_hook_charts"
    spec = importlib.util.spec_from_file_location(name, ROOT / "docs/hooks/charts.py")
    assert spec is not None
    assert spec.loader is not None
    module = sys.modules[name] = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_a_marked_table_gets_a_chart_of_its_ratios() -> None:
    charts = load_hook()
    page = "\n".join(
        [
            "<!-- chart: Echo -->",
            "| ratio | req/s | note | CPU |",
            "| --- | --- | --- | --- |",
            "| c/a (`@rpc` vs FastAPI) | 2.53x | fast | 0.5x (half) |",
            "| d/a | 1.00x | same | 32x |",
            "",
            "| unmarked | 9x |",
            "| --- | --- |",
            "| e | 3x |",
        ]
    )
    out = charts.add_charts(page)
    assert out.count("<svg") == 1  # the unmarked table has none
    svg = out[out.index("<svg") : out.index("</svg>")]
    assert svg.count('class="bar"') == 4  # two rows by the two ratio columns, not "note"
    for text in ("2.53x", "1.00x", "0.5x", "32x", "req/s", "CPU", "c/a (@rpc vs FastAPI)"):
        assert text in svg
    assert "note" not in svg
    assert out.index("| e | 3x |") > out.index("</figure>")  # the chart sits under its table


@pytest.mark.parametrize(
    ("page", "error"),
    [
        ("<!-- chart -->\nno table here", "must come just before a markdown table"),
        ("<!-- chart -->\n| a | b |\n| --- | --- |\n| x | 3 ms |", "no ratio column"),
    ],
)
def test_a_marker_without_ratios_fails_the_build(page: str, error: str) -> None:
    from mkdocs.exceptions import PluginError

    with pytest.raises(PluginError, match=error):
        load_hook().add_charts(page, where="bench.md")


@pytest.fixture(scope="module")
def site(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """The site built with ``mkdocs build --strict``, served on a free loopback port."""
    built = tmp_path_factory.mktemp("site")
    result = subprocess.run(
        [sys.executable, "-m", "mkdocs", "build", "--strict", "--site-dir", str(built)],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=180,
    )
    assert result.returncode == 0, result.stderr
    handler = functools.partial(Quiet, directory=str(built))
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    thread = threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.1})
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}"
    finally:
        server.shutdown()
        server.server_close()
        thread.join(timeout=10)


class Quiet(http.server.SimpleHTTPRequestHandler):
    """Serves the built site without a log line per request."""

    def log_message(self, format: str, *args: Any) -> None:
        pass


@pytest.fixture
def browser(tmp_path: Path) -> Iterator[Any]:
    require_chromium()
    with chromium(tmp_path / "profile") as driver:
        yield driver


def wait_for(driver: Any, script: str, *args: Any, timeout: float = 30.0) -> Any:
    """What ``script`` returns once it is truthy, polled for at most ``timeout`` seconds."""
    from selenium.webdriver.support.ui import WebDriverWait

    return WebDriverWait(driver, timeout, poll_frequency=0.1).until(
        lambda driver: driver.execute_script(script, *args)
    )


def screenshot(element: Any, path: Path) -> None:
    """A picture of ``element`` at ``path``, which must be a PNG."""
    element.screenshot(str(path))
    assert path.read_bytes()[:8] == PNG, path


@pytest.mark.slow
def test_the_pipeline_picture_renders(site: str, browser: Any, tmp_path: Path) -> None:
    from selenium.webdriver.common.by import By

    for page in ("pipeline/", ""):  # the concept page, and the home page that shows it too
        browser.get(f"{site}/{page}")
        picture = browser.find_element(By.CSS_SELECTOR, "article img[src$='img/pipeline.svg']")
        width = wait_for(
            browser, "return arguments[0].complete && arguments[0].naturalWidth", picture
        )
        assert width == 960  # the SVG's own width: it loaded and was parsed as an image
        assert picture.size["width"] > 300
        assert picture.size["height"] > 200
        screenshot(picture, tmp_path / f"pipeline-{page.strip('/') or 'home'}.png")


@pytest.mark.slow
def test_the_benchmark_charts_render(site: str, browser: Any, tmp_path: Path) -> None:
    from selenium.webdriver.common.by import By

    browser.get(f"{site}/benchmarks/")
    charts = browser.find_elements(By.CSS_SELECTOR, "article figure.bench-chart")
    assert len(charts) >= 3
    # The first chart is the HTTP RPC table's: three rows by three ratio columns.
    sizes = browser.execute_script(
        "return Array.from(arguments[0].querySelectorAll('rect.bar'), bar => {"
        " const box = bar.getBoundingClientRect(); return [box.width, box.height]; })",
        charts[0],
    )
    assert len(sizes) == 9
    assert all(width > 0 and height > 0 for width, height in sizes), sizes
    # Bars are as long as their ratios: 2.53x reaches further from 1x than 1.03x.
    widths = [width for width, _ in sizes]
    assert widths[0] > widths[3] * 5
    for number, chart in enumerate(charts):
        browser.execute_script("arguments[0].scrollIntoView({block: 'center'})", chart)
        screenshot(chart, tmp_path / f"chart-{number}.png")


@pytest.mark.slow
def test_the_reference_shows_service_and_its_docstring(
    site: str, browser: Any, tmp_path: Path
) -> None:
    from selenium.webdriver.common.by import By

    browser.get(f"{site}/reference/service/")
    heading = browser.find_element(By.ID, "asgi_micro.service.Service")
    assert heading.text.split()[-1] == "Service"
    text = browser.find_element(By.CSS_SELECTOR, "article").text
    # What documents Service: the module's docstring on the page, and the class's own once
    # it has one (``inspect.getdoc`` would hand back a base class's instead).
    docstrings = [service_module.__doc__, vars(service_module.Service).get("__doc__")]
    for docstring in filter(None, docstrings):
        first = " ".join(docstring.strip().split("\n\n")[0].split()).replace("``", "")
        assert first in " ".join(text.split()), first
    section = heading.find_element(By.XPATH, "./following-sibling::div[1]")
    for parameter in ("registry", "drain_timeout", "trust_callers"):
        assert parameter in section.text
    browser.execute_script("arguments[0].scrollIntoView({block: 'center'})", heading)
    screenshot(browser.find_element(By.CSS_SELECTOR, "article"), tmp_path / "reference.png")
