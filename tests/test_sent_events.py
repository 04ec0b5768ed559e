"""The web tier's `task-sent` events (what Flower shows a queued task by) leave in batches after
the POST (shared.sent_events), and still do after the broker restarts. Read with Celery's own
event receiver, as Flower reads them; no worker runs, so each turn's `discover` stays queued."""

import threading

import httpx

from shared.celery_config import make_celery
from shared.turn_flow import task_name
from tests.sse import post_prompt
from tests.stack import Stack
from tests.waiting import wait_for


class SentEvents:
    """`task-sent` events on the stack's broker, as Flower's receiver gets them (batches unpacked)."""

    def __init__(self, stack: Stack):
        self.app = make_celery("sent-events-test")
        self.app.conf.broker_url = stack.env["BROKER_REDIS_URL"]
        self.seen: list[dict] = []
        self.receiver = None
        threading.Thread(target=self._capture, daemon=True).start()
        wait_for(lambda: self.receiver is not None, timeout=10)

    def _capture(self) -> None:
        with self.app.connection_for_read() as connection:
            self.receiver = self.app.events.Receiver(connection, handlers={"task-sent": self.seen.append})
            try:
                self.receiver.capture(limit=None, timeout=None, wakeup=False)
            except Exception:
                if not self.receiver.should_stop:  # a stopped receiver's broker may go away under it
                    raise

    def of(self, message_id: str) -> list[str]:
        return [event["name"] for event in self.seen if message_id in str(event.get("args", ""))]

    def stop(self) -> None:
        self.receiver.should_stop = True


def test_the_web_tiers_task_sent_events_reach_the_broker_before_and_after_it_restarts(idle_stack):
    events = SentEvents(idle_stack)
    try:
        before = post_prompt(idle_stack.base_url, "sent-1", "calculate 1 + 1").json()["message_id"]
        assert wait_for(lambda: events.of(before), timeout=20) == [task_name("discover")]
    finally:
        events.stop()

    idle_stack.stop_redis("broker")
    idle_stack.restart_redis("broker")
    wait_for(lambda: httpx.get(f"{idle_stack.base_url}/readyz", timeout=5).status_code == 200, timeout=30)
    events = SentEvents(idle_stack)
    try:
        after = wait_for(lambda: (lambda r: r.json()["message_id"] if r.status_code == 202 else None)(
            post_prompt(idle_stack.base_url, "sent-2", "calculate 2 + 2")), timeout=30)
        assert wait_for(lambda: events.of(after), timeout=20) == [task_name("discover")]
    finally:
        events.stop()
