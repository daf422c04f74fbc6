"""Opening pages written by :func:`mplp_graph.viz.html.view` in headless Chromium, for the tests,
the benchmark and the screenshots in docs/ (docs/view.md). Needs the ``playwright`` package (the
``test`` extra) and a Chromium installed by the system (Debian: ``apt-get install chromium``);
Playwright's own browser download is never used."""

from __future__ import annotations

import contextlib
import os
import shutil
from pathlib import Path
from typing import Any, Iterator

# no background traffic of the browser itself: the pages must make no request at all
CHROMIUM_ARGS = (
    "--no-sandbox", "--disable-gpu", "--disable-background-networking", "--disable-component-update", "--disable-sync",
    "--no-first-run", "--disable-quic",
)
CANDIDATES = ("/usr/bin/chromium", "/usr/bin/chromium-browser", "/usr/bin/google-chrome")


def chromium_path() -> str | None:
    """``$MPLP_GRAPH_CHROMIUM``, else the first system Chromium found, else None."""
    env = os.environ.get("MPLP_GRAPH_CHROMIUM")
    if env:
        return env if os.path.isfile(env) else None
    for p in CANDIDATES:
        if os.path.isfile(p):
            return p
    found = shutil.which("chromium")
    return found


@contextlib.contextmanager
def chromium() -> Iterator[Any]:
    """A headless Chromium browser (Playwright), closed on exit."""
    from playwright.sync_api import sync_playwright

    path = chromium_path()
    if path is None:
        raise RuntimeError("no Chromium found: install it (Debian: apt-get install -y chromium) or set MPLP_GRAPH_CHROMIUM")
    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=path, args=list(CHROMIUM_ARGS))
        try:
            yield browser
        finally:
            browser.close()


def open_page(browser: Any, path: str | Path, *, width: int = 1400, height: int = 900, timeout_ms: float = 20_000) -> tuple[Any, dict[str, list]]:
    """Open ``path`` (a file) in a new page and wait until the viewer is interactive. Returns the
    page and what it logged: ``{"requests": [url...], "errors": [console errors and uncaught
    exceptions], "blocked": [urls of non-file requests, which are aborted]}``."""
    page = browser.new_page(viewport={"width": width, "height": height})
    log: dict[str, list] = {"requests": [], "errors": [], "blocked": []}
    page.on("request", lambda r: log["requests"].append(r.url))
    page.on("console", lambda m: log["errors"].append(m.text) if m.type == "error" else None)
    page.on("pageerror", lambda e: log["errors"].append(str(e)))

    def route(r: Any) -> None:
        if r.request.url.startswith("file://"):
            r.continue_()
        else:
            log["blocked"].append(r.request.url)
            r.abort()

    page.route("**/*", route)
    page.goto(Path(path).resolve().as_uri())
    page.wait_for_function("window.mgView && window.mgView.ready === true", timeout=timeout_ms)
    return page, log
