"""Headless Chromium for the browser tests: Debian's chromium driven by playwright.

`playwright install` downloads a browser build of its own, which these machines cannot
fetch; `make test` installs Debian's chromium instead (deploy/install-chromium.sh)."""

import os
from pathlib import Path

from playwright.sync_api import Browser, Page, Playwright

CHROMIUM = os.environ.get("TURNSTREAM_CHROMIUM", "/usr/bin/chromium")
CHROMIUM_ARGS = ["--no-sandbox", "--disable-gpu", "--disable-background-networking"]
ARTIFACTS = Path(__file__).parent / "artifacts"


def launch(playwright: Playwright) -> Browser:
    if not Path(CHROMIUM).exists():
        raise RuntimeError(f"{CHROMIUM} is missing: run `make test` (it installs chromium) "
                           "or set TURNSTREAM_CHROMIUM")
    return playwright.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)


def watch_errors(page: Page) -> list[str]:
    """Uncaught script errors and console errors of `page`, collected as they happen."""
    problems: list[str] = []
    page.on("pageerror", lambda exc: problems.append(f"uncaught: {exc}"))
    page.on("console", lambda msg: problems.append(f"console: {msg.text}") if msg.type == "error" else None)
    return problems


def screenshot(page: Page, name: str) -> Path:
    ARTIFACTS.mkdir(exist_ok=True)
    path = ARTIFACTS / f"{name}.png"
    page.screenshot(path=str(path), full_page=True)
    return path
