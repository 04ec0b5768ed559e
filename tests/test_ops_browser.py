"""/ops in headless Chromium: it opens with an admin token in the URL, hides the token, and
refreshes its panels over SSE without a reload."""

import re

import pytest
from playwright.sync_api import expect, sync_playwright

from shared.identity import issue_user_token
from tests.browser import launch, screenshot, watch_errors


@pytest.fixture(scope="module")
def page(stack):
    with sync_playwright() as playwright:
        browser = launch(playwright)
        context = browser.new_context(viewport={"width": 1280, "height": 900})
        page = context.new_page()
        page.errors = watch_errors(page)
        yield page
        browser.close()


def test_ops_page_goes_live_in_a_browser_and_hides_the_token(page, base_url, stack):
    token = issue_user_token("ops", "acme", ["admin"])
    page.goto(f"{base_url}/ops?token={token}")
    expect(page.locator("#live")).to_have_text(re.compile(r"^live, updated "), timeout=15_000)
    assert "token" not in page.url, "the admin token is dropped from the address bar"
    first = page.locator("#live").inner_text()
    expect(page.locator("#live")).not_to_have_text(first, timeout=15_000)  # a later snapshot arrived
    expect(page.locator('#redis tr[data-store="broker"]')).to_contain_text("noeviction — matches the store")
    expect(page.locator('#redis tr[data-store="exec_cache"]')).to_contain_text(f"127.0.0.1:{stack.ports['exec_cache']}")
    screenshot(page, "ops")
    assert page.errors == []
