"""How a prompt becomes a chain: the task names, sending a turn, revoking it, and reading a
turn back out of a task's arguments.

The web tier sends `discover | reason` by task name (it never imports workers); each step
then sends the next one itself (workers.steps.forward). Every task of the chain, and every
task a step sends after it, carries the `turn_failed` errback, which ends the turn with one
`error` event whatever failed. The web tier holds no result subscription for the first two
tasks (`ignore_result`): the turn's record (shared.turns) is its result.

Rejected: a coordinator task that polls the chain. It would hold a worker slot per turn for
the whole turn and would itself need redelivery; a self-forwarding chain needs neither."""

from celery import Celery, chain

TASK_PREFIX = "turnstream"


def task_name(step: str) -> str:
    """`turnstream.<step>`: the name a step's task is registered and routed under."""
    return f"{TASK_PREFIX}.{step}"


def step_of(name: str) -> str:
    """The step a task name runs (the inverse of task_name)."""
    return name.removeprefix(f"{TASK_PREFIX}.")


def turn_of(args: tuple | list | None) -> dict:
    """The turn a task's arguments carry: the first dict that names its session (`collect` gets
    its round's results first, then the turn; `call_tool` a reference to the turn). Empty when
    the task carries none."""
    return next((a for a in args or () if isinstance(a, dict) and "session_id" in a), {})


def first_task_ids(message_id: str) -> tuple[str, str]:
    """The ids of the two tasks the web tier sends: they follow from the turn, so cancelling can
    revoke them without a lookup (later steps are stopped by the turn's status, see workers.steps)."""
    return f"{message_id}-discover", f"{message_id}-reason-1"


def turn_chain(app: Celery, turn: dict):
    """discover -> reason, by task name, with the `turn_failed` errback on the chain."""
    discover_id, reason_id = first_task_ids(turn["message_id"])
    errback = app.signature(task_name("turn_failed"), args=(turn["session_id"], turn["message_id"]))
    flow = chain(app.signature(task_name("discover"), args=(turn,), options={"task_id": discover_id, "ignore_result": True}),
                 app.signature(task_name("reason"), options={"task_id": reason_id, "ignore_result": True}))
    return flow.on_error(errback)


def send_turn(app: Celery, turn: dict, **options: object) -> None:
    """Enqueue the turn's chain on the broker (`options` go to apply_async, e.g. a retry policy)."""
    turn_chain(app, turn).apply_async(**options)


def revoke_turn(app: Celery, message_id: str) -> None:
    """Tell every worker to drop the turn's first tasks if they have not started."""
    app.control.revoke(list(first_task_ids(message_id)))
