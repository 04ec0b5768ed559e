"""The web UI in headless Chromium, against the real system: sign in, post a prompt, watch the
timeline and the answer, survive a stream the server drops mid-turn.

Also the streaming guarantee as a browser sees it: a plain EventSource reconnects by itself
after a server-side drop and receives every event of the turn exactly once."""

import json
import re
import uuid

import httpx
import pytest
from playwright.sync_api import Page, expect, sync_playwright

from shared import turns
from shared.events import DoneEvent, ErrorEvent, StepEvent, ToolEvent
from shared.identity import Principal, issue_user_token
from shared.progress import Publisher, read_log
from shared.vocabulary import EVENT_TYPES, TERMINAL_EVENTS
from tests.browser import launch, screenshot, watch_errors
from tests.sse import bearer, post_prompt
from tests.stack import Stack

WEATHER_PARIS = "In Paris it is 14°C with light rain and wind at 18 km/h."
# discover, reason -> execute, reason again (it wants no more tools), synthesize.
STEP_NAMES = ["discover", "reason", "execute", "reason", "synthesize"]
DURATION = re.compile(r"^\d+(\.\d)? (ms|s)$")


@pytest.fixture(scope="module")
def browser():
    with sync_playwright() as playwright:
        chromium = launch(playwright)
        yield chromium
        chromium.close()


@pytest.fixture
def page(browser):
    context = browser.new_context(viewport={"width": 1280, "height": 860})
    page = context.new_page()
    page.errors = watch_errors(page)
    yield page
    context.close()


@pytest.fixture(scope="module")
def slow_stack(stack, tmp_path_factory):
    """A system whose tools take a while, so a turn is still running when its stream is cut.

    It needs `stack` only for this process's settings (the shared test secret signs tokens)."""
    system = Stack(tmp_path_factory.mktemp("slow"), TURNSTREAM_TOOL_LATENCY_MS="1200", TURNSTREAM_SSE_RETRY_MS="300",
                   TURNSTREAM_REPORT_DURATION_S="6")
    # One worker slot: the turn's three tool calls run one after another, so it is still running
    # for seconds after the first tool event (in parallel they would all end together).
    with system.running(concurrency=1):
        yield system


def sign_in(page: Page, base_url: str, user: str) -> None:
    page.goto(base_url + "/")
    page.get_by_label("Access token").fill(issue_user_token(user, "acme", ["analyst"]))
    page.get_by_role("button", name="Sign in").click()
    expect(page.get_by_role("button", name="Sign out")).to_be_visible()


def send_prompt(page: Page, prompt: str) -> None:
    page.get_by_label("Prompt", exact=True).fill(prompt)
    page.get_by_label("Prompt", exact=True).press("Enter")


def expect_finished_steps(turn) -> None:
    steps = turn.locator("li.step")
    expect(steps).to_have_count(len(STEP_NAMES))
    assert [steps.nth(i).get_attribute("data-step") for i in range(len(STEP_NAMES))] == STEP_NAMES
    for i in range(len(STEP_NAMES)):
        expect(steps.nth(i)).to_have_class(re.compile(r"\bfinished\b"))
        assert DURATION.match(steps.nth(i).locator(".step-head .duration").inner_text()), "each step shows its duration"


def log_of(turn_element, progress_redis=None) -> list:
    session_id = turn_element.evaluate("el => location.hash.split('=')[1]")
    return read_log(session_id, turn_element.get_attribute("data-message-id"), r=progress_redis)


STREAMED_TEXT_RECORDER = """
    window.streamed = [];
    new MutationObserver(() => {
        const node = document.querySelector(".answer .streaming");
        if (node && node.textContent) window.streamed.push(node.textContent);
    }).observe(document, {subtree: true, childList: true, characterData: true});
"""


CONNECTION_STATE_RECORDER = """
    window.connectionStates = [];
    document.addEventListener("DOMContentLoaded", () => {
        const node = document.getElementById("connection");
        new MutationObserver(() => {
            if (window.connectionStates.at(-1) !== node.dataset.state) window.connectionStates.push(node.dataset.state);
        }).observe(node, {attributes: true, attributeFilter: ["data-state"]});
    });
"""


def test_a_prompt_shows_the_turn_its_steps_and_the_answer(page, base_url):
    page.add_init_script(STREAMED_TEXT_RECORDER)
    page.goto(base_url + "/")
    page.get_by_role("button", name="Use a demo token").click()
    expect(page.get_by_text("demo @ demo")).to_be_visible()

    send_prompt(page, "What is the weather in Paris?")
    turn = page.locator("li.turn").last
    expect(turn.locator(".prompt-text")).to_have_text("What is the weather in Paris?")
    expect(turn.locator(".answer .markdown")).to_have_text(WEATHER_PARIS, timeout=20_000)

    expect_finished_steps(turn)
    tool = turn.locator("li.step[data-step=execute] li.tool")
    expect(tool).to_have_count(1)
    expect(tool.locator(".tool-name")).to_have_text("weather")
    expect(tool.locator(".args")).to_have_text('{"city":"Paris"}')
    assert DURATION.match(tool.locator(".tool-head .duration").inner_text())
    expect(tool.locator(".preview")).to_contain_text('"temp_c": 14')
    expect(page.get_by_role("status")).to_have_text("Turn finished")
    assert int(turn.get_attribute("data-event-count")) == len(log_of(turn))
    streamed = page.evaluate("window.streamed")
    assert streamed and streamed[-1].strip() == WEATHER_PARIS, "the answer streamed in before it was rendered"

    # The session is listed at the side, titled by its first prompt and its time, and is the current one.
    current = page.locator("#session-list .session[aria-current=page]")
    expect(current.locator(".session-prompt")).to_have_text("What is the weather in Paris?")
    expect(current.locator("time.session-time")).to_have_text(re.compile(r"\d{1,2}:\d{2}:\d{2}"))

    # The raw result preview folds away.
    fold = tool.locator("details.result")
    fold.locator("summary").click()
    expect(tool.locator(".preview")).to_be_hidden()
    screenshot(page, "ui-desktop")

    # A reload keeps the sign-in and the session; its history loads, steps included on demand.
    page.reload()
    turn = page.locator("li.turn").last
    expect(turn.locator(".answer .markdown")).to_have_text(WEATHER_PARIS)
    turn.locator("summary").focus()
    page.keyboard.press("Enter")
    expect_finished_steps(turn)
    assert page.errors == []


def test_on_a_narrow_screen_sessions_are_a_drawer(page, base_url):
    page.set_viewport_size({"width": 390, "height": 844})
    sign_in(page, base_url, "narrow" + uuid.uuid4().hex[:6])
    send_prompt(page, "calculate 6 * 7 + 1")
    expect(page.locator("li.turn .answer .markdown")).to_have_text("6 * 7 + 1 = 43.", timeout=20_000)
    sessions = page.get_by_role("navigation", name="Sessions")
    expect(sessions).to_be_hidden()
    width = page.evaluate("document.documentElement.scrollWidth")
    assert width <= 390, f"the page scrolls sideways on a phone ({width}px wide)"
    screenshot(page, "ui-narrow")

    toggle = page.get_by_role("button", name="Sessions")
    toggle.focus()
    page.keyboard.press("Enter")
    expect(toggle).to_have_attribute("aria-expanded", "true")
    expect(sessions.locator(".session .session-prompt")).to_have_text(["calculate 6 * 7 + 1"])
    screenshot(page, "ui-narrow-sessions")
    page.keyboard.press("Escape")
    expect(sessions).to_be_hidden()
    expect(toggle).to_be_focused()
    assert page.errors == []


def test_denials_permission_and_cache_results_and_markdown_are_shown(page, stack, base_url):
    """A worker's events rendered as they arrive: the permission and cache fields, a denied tool,
    and an answer whose HTML stays text while its Markdown is rendered."""
    user, session_id, message_id = "guard" + uuid.uuid4().hex[:6], "s" + uuid.uuid4().hex[:12], uuid.uuid4().hex
    principal = Principal(user, "acme", ("analyst",))
    assert turns.claim_session(session_id, principal)
    turns.create_turn(session_id, message_id, principal, "File a ticket about the outage")

    sign_in(page, base_url, user)
    page.locator(f"#session-list .session[data-session-id='{session_id}']").click()
    turn = page.locator(f"li.turn[data-message-id='{message_id}']")
    expect(turn).to_have_attribute("data-connection", "connected")

    publisher = Publisher(session_id, message_id)
    publisher.publish(StepEvent(step="execute", status="started"))
    expect(turn.locator("li.step.running .step-name")).to_have_text("Calling tools")
    publisher.publish(ToolEvent(call_id="c1", tool="search_kb", args={"query": "outage"}, status="ok",
                                duration_ms=3.5, result_preview='{"hits": []}',
                                permission={"allowed": True, "memo": "hit"}, cache="coalesced"))
    publisher.publish(ToolEvent(call_id="c2", tool="create_ticket", args={"title": "Outage"}, status="denied",
                                duration_ms=41.0, permission={"allowed": False, "memo": "miss"},
                                error="role analyst may not call create_ticket"))
    publisher.publish(StepEvent(step="execute", status="finished", duration_ms=52.0))
    answer = "**Sorry.** I could not file it:\n\n- `create_ticket` is denied\n- ask an admin\n\n<img src=x onerror=alert(1)>"
    publisher.publish(DoneEvent(answer=answer))

    allowed, denied = turn.locator("li.tool[data-tool=search_kb]"), turn.locator("li.tool[data-tool=create_ticket]")
    expect(allowed.locator(".badge.permission .badge-value")).to_have_text("permission remembered")
    expect(allowed.locator(".badge.cache .badge-value")).to_have_text("shared result")
    expect(denied.locator(".tool-name")).to_have_text("You may not use create_ticket")
    expect(denied.locator(".badge.permission .badge-value")).to_have_text("denied · checked now")
    expect(denied.locator(".tool-error")).to_have_text("role analyst may not call create_ticket")

    markdown = turn.locator(".answer .markdown")
    expect(markdown.locator("strong")).to_have_text("Sorry.")
    expect(markdown.locator("li")).to_have_text(["create_ticket is denied", "ask an admin"])
    expect(markdown.locator("li code")).to_have_text("create_ticket")
    expect(markdown).to_contain_text("<img src=x onerror=alert(1)>")
    assert markdown.locator("img, script").count() == 0
    screenshot(page, "ui-denied")
    assert page.errors == []


def test_a_failed_turn_and_a_refused_prompt_are_shown_plainly(page, base_url):
    user = "fail" + uuid.uuid4().hex[:6]
    sign_in(page, base_url, user)
    send_prompt(page, "x" * 4001)
    problem = page.locator("li.turn .problem")
    expect(problem).to_have_text("Could not send: prompt is 4001 characters; the limit is 4000")
    expect(page.get_by_label("Prompt", exact=True)).to_have_value("x" * 4001)

    # A turn whose worker reports an error: the page follows it and shows the `error` event.
    session_id, message_id = page.evaluate("location.hash.split('=')[1]"), uuid.uuid4().hex
    principal = Principal(user, "acme", ("analyst",))
    assert turns.claim_session(session_id, principal)
    turns.create_turn(session_id, message_id, principal, "calculate 1 + 1")
    message = "Writing the answer failed: the model server at http://127.0.0.1:9/v1 answered HTTP 500."
    Publisher(session_id, message_id).publish(StepEvent(step="synthesize", status="started"))
    Publisher(session_id, message_id).publish(ErrorEvent(message=message, step="synthesize"))
    page.reload()
    turn = page.locator(f"li.turn[data-message-id='{message_id}']")
    expect(turn.locator(".problem")).to_have_text(message)
    # The step that failed no longer spins: it shows that it failed.
    step = turn.locator("li.step[data-step=synthesize]")
    expect(step).to_have_class(re.compile(r"\bfailed\b"))
    expect(step).not_to_have_class(re.compile(r"\brunning\b"))
    expect(step).to_contain_text("failed")
    expect(page.get_by_role("status")).to_have_text("Turn finished")
    expect(turn.locator(".running")).to_have_count(0)  # no spinner left on a failed turn
    expect(turn.get_by_role("button", name="Cancel this turn")).to_be_hidden()
    assert [e for e in page.errors if "status of 413" not in e] == []


def test_a_tool_error_is_shown_in_its_line_and_the_turn_still_answers(page, base_url):
    sign_in(page, base_url, "tools" + uuid.uuid4().hex[:6])
    send_prompt(page, "What is the weather in Paris? Also 1/0 + 1")
    turn = page.locator("li.turn").last
    expect(turn.locator(".answer .markdown")).to_contain_text("I could not use calculator", timeout=20_000)
    failed = turn.locator("li.tool[data-tool=calculator]")
    expect(failed).to_have_class(re.compile(r"\berror\b"))
    expect(failed.locator(".tool-name")).to_have_text("calculator failed")
    expect(failed.locator(".tool-error")).to_contain_text("cannot evaluate")
    expect(failed.locator(".preview")).to_have_count(0)
    expect(turn.locator("li.tool[data-tool=weather] .preview")).to_contain_text('"city": "Paris"')
    assert page.errors == []


def test_a_bad_token_is_refused_with_a_reason(page, base_url):
    page.goto(base_url + "/")
    page.get_by_label("Access token").fill("not-a-token")
    page.get_by_label("Access token").press("Enter")
    expect(page.get_by_role("alert").first).to_contain_text("Your token was refused: invalid token")
    expect(page.get_by_role("navigation", name="Sessions")).to_be_hidden()
    screenshot(page, "ui-signin-refused")


def test_the_page_resumes_a_dropped_stream_with_the_full_timeline(page, slow_stack):
    page.add_init_script(CONNECTION_STATE_RECORDER)
    sign_in(page, slow_stack.base_url, "resume" + uuid.uuid4().hex[:6])
    send_prompt(page, "What is the weather in Paris, London and Berlin?")
    turn = page.locator("li.turn").last
    expect(turn.locator("li.tool[data-tool=weather]").first).to_be_visible(timeout=20_000)
    assert turn.locator(".answer .markdown").count() == 0, "the turn is still running"
    expect(turn.locator("li.step.running .step-name")).to_have_text("Calling tools")
    screenshot(page, "ui-running")

    killed = slow_stack.client("progress").client_kill_filter(_type="pubsub")
    assert killed >= 1, "the web process's pub/sub connection was cut"

    expect(turn.locator(".answer .markdown")).to_contain_text("In Berlin", timeout=30_000)
    assert int(turn.get_attribute("data-reconnects")) >= 1
    states = page.evaluate("window.connectionStates")
    assert states[-1] == "ended"
    assert states.index("connected") < states.index("reconnecting") < states.index("resumed"), states
    expect(turn.locator(".note.resume").first).to_contain_text("Connection dropped; resumed after event")
    expect_finished_steps(turn)
    tools = turn.locator("li.tool")
    expect(tools).to_have_count(3)
    assert [json.loads(tools.nth(i).locator(".args").inner_text()) for i in range(3)] == [
        {"city": "Paris"}, {"city": "London"}, {"city": "Berlin"}]
    ids = turn.locator("[data-event-id]").evaluate_all("nodes => nodes.map(n => n.dataset.eventId)")
    assert len(ids) == len(set(ids)) == len(STEP_NAMES) + 3, "each step and tool line shows once"

    log = log_of(turn, slow_stack.client("progress"))
    assert int(turn.get_attribute("data-event-count")) == len(log)
    assert turn.get_attribute("data-last-event-id") == log[-1].id
    assert log[-1].type == "done"
    screenshot(page, "ui-resumed")
    assert page.errors == []


def test_a_plain_eventsource_reconnects_by_itself_and_gets_every_event_once(page, slow_stack):
    """No client-side dedupe here: what arrives is exactly what the server sent."""
    session_id = "s" + uuid.uuid4().hex[:12]
    # Other cities than the test above, so no tool result is already cached (the turn stays slow).
    body = post_prompt(slow_stack.base_url, session_id, "What is the weather in Tokyo, Sydney and Madrid?").json()
    page.goto(slow_stack.base_url + "/healthz")
    page.evaluate("""([url, EVENT_TYPES, TERMINAL]) => {
        window.received = []; window.opens = 0; window.drops = 0; window.finished = false;
        const source = new EventSource(url);
        source.onopen = () => { window.opens += 1; };
        source.onerror = () => { if (!window.finished) window.drops += 1; };
        for (const type of EVENT_TYPES) {
            source.addEventListener(type, (e) => {
                if (!(e instanceof MessageEvent)) return;
                window.received.push({type, id: e.lastEventId, data: e.data});
                if (TERMINAL.includes(type)) { window.finished = true; source.close(); }
            });
        }
    }""", [body["stream_url"], list(EVENT_TYPES), sorted(TERMINAL_EVENTS)])
    page.wait_for_function("window.received.some(e => e.type === 'tool')", timeout=20_000)
    assert not page.evaluate("window.finished")
    assert slow_stack.client("progress").client_kill_filter(_type="pubsub") >= 1

    page.wait_for_function("window.finished", timeout=30_000)
    received = page.evaluate("window.received")
    log = read_log(session_id, body["message_id"], r=slow_stack.client("progress"))
    assert [(e["type"], e["id"], json.loads(e["data"])) for e in received] == \
        [(e.type, e.id, json.loads(e.data)) for e in log]
    assert page.evaluate("window.drops") >= 1 and page.evaluate("window.opens") >= 2, "it reconnected by itself"
    status = httpx.get(slow_stack.base_url + body["status_url"], headers=bearer()).json()
    assert status["status"] == "done"


def test_a_slow_tool_shows_its_card_with_a_running_timer_and_progress(page, slow_stack):
    sign_in(page, slow_stack.base_url, "report" + uuid.uuid4().hex[:6])
    send_prompt(page, "Make my sales report")
    turn = page.locator("li.turn").last
    card = turn.locator("li.tool[data-tool=sales_report]")
    expect(card).to_have_class(re.compile(r"\brunning\b"), timeout=20_000)
    elapsed = card.get_by_label("Elapsed time")
    expect(elapsed).to_have_text(re.compile(r"^\d+ s$"))
    first = elapsed.inner_text()
    expect(elapsed).not_to_have_text(first, timeout=5_000)  # the timer ticks while the tool works
    expect(card.get_by_label("sales_report progress")).to_be_visible()
    expect(card.locator(".progress-text")).to_contain_text("%")
    assert card.get_attribute("data-status") in ("started", "running")
    assert turn.locator(".answer .markdown").count() == 0, "the card showed before the tool finished"
    screenshot(page, "ui-tool-running")

    expect(turn.locator(".answer .markdown")).to_contain_text("Your sales report", timeout=30_000)
    expect(card).to_have_class(re.compile(r"\bok\b"))
    assert DURATION.match(card.locator(".tool-head .duration").inner_text())
    expect(card.locator("progress")).to_have_count(0)
    expect(turn.get_by_role("button", name="Cancel this turn")).to_be_hidden()
    assert page.errors == []


def test_cancel_stops_a_running_turn_and_says_so_in_the_timeline(page, slow_stack):
    sign_in(page, slow_stack.base_url, "cancel" + uuid.uuid4().hex[:6])
    send_prompt(page, "Make my sales report")
    turn = page.locator("li.turn").last
    expect(turn.locator("li.tool[data-tool=sales_report]")).to_be_visible(timeout=20_000)
    turn.get_by_role("button", name="Cancel this turn").click()

    expect(turn.locator(".note.cancel")).to_have_text("You cancelled this turn.")
    expect(turn.locator(".problem")).to_have_text("This turn was cancelled.")
    expect(turn.locator(".running")).to_have_count(0)  # no spinner, no ticking timer
    expect(turn.locator("li.tool[data-tool=sales_report]")).to_have_class(re.compile(r"\bstopped\b"))
    expect(turn.get_by_role("button", name="Cancel this turn")).to_be_hidden()
    expect(page.get_by_role("status")).to_have_text("Turn finished")
    session_id = page.evaluate("location.hash.split('=')[1]")
    status_url = f"{slow_stack.base_url}/api/sessions/{session_id}/messages/{turn.get_attribute('data-message-id')}"
    token = page.evaluate("sessionStorage.getItem('turnstream.token')")
    assert httpx.get(status_url, headers={"Authorization": f"Bearer {token}"}).json()["status"] == "cancelled"
    screenshot(page, "ui-cancelled")
    assert page.errors == []


def test_two_sessions_with_the_same_first_prompt_can_be_told_apart(page, base_url):
    sign_in(page, base_url, "twins" + uuid.uuid4().hex[:6])
    for _ in range(2):
        page.get_by_role("button", name="New chat").click()
        send_prompt(page, "calculate 2 + 2")
        expect(page.locator("li.turn .answer .markdown")).to_have_text("2 + 2 = 4.", timeout=20_000)
    sessions = page.locator("#session-list .session")
    expect(sessions).to_have_count(2)
    expect(sessions.locator(".session-prompt")).to_have_text(["calculate 2 + 2", "calculate 2 + 2"])
    labels = sessions.evaluate_all("nodes => nodes.map(n => n.innerText)")
    assert labels[0] != labels[1]
    page.reload()  # titles from the server's records say the same
    expect(sessions).to_have_count(2)
    expect(sessions.locator("time.session-time").first).not_to_be_empty()
    labels = sessions.evaluate_all("nodes => nodes.map(n => n.innerText)")
    assert labels[0] != labels[1]
    assert page.errors == []


MARKDOWN_CASES = {
    "# Title\n\nSome *em* and _em_, **bold**, `a<b>`.": '<h3>Title</h3><p>Some <em>em</em> and <em>em</em>, '
                                                       '<strong>bold</strong>, <code>a&lt;b&gt;</code>.</p>',
    "1. one\n2. two\n\n> quoted": "<ol><li>one</li><li>two</li></ol><blockquote><p>quoted</p></blockquote>",
    "```py\nx = '<script>'\n```": '<pre><code data-lang="py">x = \'&lt;script&gt;\'</code></pre>',
    "[ok](https://example.org/a) [bad](javascript:alert(1))":
        '<p><a href="https://example.org/a" rel="noopener noreferrer nofollow" target="_blank">ok</a> '
        '[bad](javascript:alert(1))</p>',
    "6 * 7 + 1 = 43.\nnext line": "<p>6 * 7 + 1 = 43.<br>next line</p>",
    '<b onclick="x()">hi</b>': "<p>&lt;b onclick=\"x()\"&gt;hi&lt;/b&gt;</p>",
}


def test_the_markdown_subset_renders_safely(page, base_url):
    page.goto(base_url + "/")
    rendered = page.evaluate("""async (cases) => {
        const { renderMarkdown } = await import("/static/markdown.js");
        return cases.map((source) => renderMarkdown(source).innerHTML);
    }""", list(MARKDOWN_CASES))
    assert dict(zip(MARKDOWN_CASES, rendered)) == MARKDOWN_CASES
