"""A live CKAN (werkzeug server in a thread, the real app) and Debian's headless chromium via Playwright."""

from __future__ import annotations

import threading
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from playwright.sync_api import Browser, ConsoleMessage, Page, Request, expect, sync_playwright
from werkzeug.serving import make_server

from devstack.services import free_port

CHROMIUM = "/usr/bin/chromium"
ARGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
]
SCREENSHOTS = Path(__file__).resolve().parents[3] / "test-artifacts" / "screenshots"

expect.set_options(timeout=15_000)  # two busy cores: pages may take seconds


@pytest.fixture
def live_ckan(
    with_plugins: None, clean_db: None, clean_tokens: None, ckan_config: Any, make_app: Callable[[], Any]
) -> Iterator[str]:
    """CKAN served over HTTP on a free port; logging in lands on the ML API tokens tab."""
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    ckan_config["ckan.site_url"] = url
    ckan_config["ckan.auth.route_after_login"] = "mltokens.mine"
    server = make_server("127.0.0.1", port, make_app().app, threaded=True)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield url
    server.shutdown()
    thread.join(timeout=10)


@pytest.fixture(scope="session")
def browser() -> Iterator[Browser]:
    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=CHROMIUM, args=ARGS, headless=True)
        yield browser
        browser.close()


@pytest.fixture
def new_page(browser: Browser, live_ckan: str) -> Iterator[Callable[[], Page]]:
    """Fresh browser contexts (own cookies, clipboard allowed); any JavaScript error fails the test."""
    contexts = []
    errors: list[str] = []

    def open_page() -> Page:
        context = browser.new_context(base_url=live_ckan, viewport={"width": 1280, "height": 900})
        context.grant_permissions(["clipboard-read", "clipboard-write"], origin=live_ckan)
        contexts.append(context)
        page = context.new_page()
        page.on("pageerror", lambda exc: errors.append(str(exc)))
        page.on("console", lambda msg: _console(msg, errors))
        page.on("requestfailed", lambda req: _failed(req, errors))
        page.on("response", lambda r: r.status >= 500 and errors.append(f"{r.status}: {r.url}"))
        return page

    yield open_page
    for context in contexts:
        context.close()
    assert errors == [], errors


def _failed(request: Request, errors: list[str]) -> None:
    """A request that failed, other than one cut short by navigating on."""
    if request.failure != "net::ERR_ABORTED":
        errors.append(f"{request.url}: {request.failure}")


def _console(msg: ConsoleMessage, errors: list[str]) -> None:
    if msg.type == "error" and "favicon" not in msg.text:
        errors.append(msg.text)


@pytest.fixture
def shoot() -> Callable[..., Path]:
    """Save a screenshot under test-artifacts/screenshots/ (the whole page, or just the window)."""
    SCREENSHOTS.mkdir(parents=True, exist_ok=True)

    def save(page: Page, name: str, full_page: bool = True) -> Path:
        path = SCREENSHOTS / f"{name}.png"
        page.screenshot(path=str(path), full_page=full_page, animations="disabled")
        return path

    return save
