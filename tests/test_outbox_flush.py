"""A worker publishes the progress outbox even while its liveness beats fail (workers.redelivery).

After a broker outage a worker's beat can keep failing for a while (its breaker still open, the
dead-worker sweep refused), while the progress Redis answers. The events that waited in the
outbox must reach the turn's log then, not at the first beat that succeeds: a stream shows
nothing of the turn until they do. The stack here has no worker of its own, so the only process
that can publish the outbox is the one this test starts, whose beats are made to fail."""

import subprocess
import sys
import uuid

from shared import keys
from shared.cli import processes
from shared.cli.processes import REPO_ROOT
from tests.waiting import wait_for

# A step-running process's liveness thread, with every beat failing as during a broker outage.
FAILING_BEATS = """
import sys, threading, time
from shared import liveness, outbox
from shared.breakers import StoreUnavailable
from shared.events import StepEvent
from shared.progress import render
from workers import redelivery

def broker_down(*_, **__):
    raise StoreUnavailable("broker")

liveness.beat = broker_down
session_id, message_id = sys.argv[1], sys.argv[2]
assert outbox.keep(session_id, message_id, render(StepEvent(step="discover", status="started")), "discover-started")
print("kept", flush=True)
threading.Thread(target=redelivery.beat_forever, args=(None,), daemon=True).start()
time.sleep(60)
"""


def test_the_outbox_is_published_while_the_beats_fail(idle_stack):
    session_id, message_id = "outbox1", uuid.uuid4().hex
    worker = subprocess.Popen([sys.executable, "-c", FAILING_BEATS, session_id, message_id], cwd=REPO_ROOT,
                              env=processes.child_env(idle_stack.env), stdout=subprocess.PIPE, text=True)
    try:
        assert worker.stdout.readline().strip() == "kept"
        log_key = keys.progress_log(session_id, message_id)
        entries = wait_for(lambda: idle_stack.client("progress").xrange(log_key), timeout=30,
                           describe=lambda: f"outbox holds {idle_stack.client('broker').llen(keys.outbox())}")
        assert [fields["type"] for _, fields in entries] == ["step"]
        assert idle_stack.client("broker").llen(keys.outbox()) == 0
    finally:
        worker.kill()
        worker.wait()
