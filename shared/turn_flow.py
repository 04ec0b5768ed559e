"""How a prompt becomes a chain: the task names, sending a turn, revoking it, and reading a
turn back out of a task's arguments.

The web tier sends `discover` by task name (it never imports workers); each step then sends
the next one itself (workers.steps.forward), discover too: `reason`, under the id
`first_task_ids` gives it, so a cancel revokes both without a lookup. Every task, and every
task a step sends after it, carries the `turn_failed` errback, which ends the turn with one
`error` event whatever failed. The web tier holds no result subscription (`ignore_result`):
the turn's record (shared.turns) is its result. (Rejected: `discover | reason` as a Celery
chain from the web tier. Celery then reprs discover's whole result, tool catalogue included,
for its log line, and builds and carries the second signature in every first message.)

Rejected: a coordinator task that polls the chain. It would hold a worker slot per turn for
the whole turn and would itself need redelivery; a self-forwarding chain needs neither."""

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, NotRequired, TypedDict

from celery import Celery

from shared.vocabulary import COLLECT, DISCOVER, EXECUTE, REASON, SYNTHESIZE, TURN_FAILED, ToolStatus

TASK_PREFIX = "turnstream"


# --- The shapes that travel down the chain (JSON, so TypedDicts: they stay plain dicts) ------------

class TurnRef(TypedDict):
    """Which turn, and who it is for (from the signed token, never from the model). This is what
    each `call_tool` task gets."""

    session_id: str
    message_id: str
    user: str
    tenant: str
    roles: list[str]


class TurnPayload(TurnRef):
    """What the web tier sends the chain with (web.api), and what a turn's record keeps so it
    can be sent again (workers.redelivery)."""

    prompt: str


class ToolCall(TypedDict):
    """One call the reasoner asked for. `error` is set when the reasoner's own arguments were
    unusable (the call is reported, not run)."""

    call_id: str
    tool: str
    args: dict[str, Any]
    error: NotRequired[str]
    model_call_id: NotRequired[str]


class ToolOutcome(ToolCall):
    """A call as it ended: `result` when ok, `error` otherwise."""

    status: ToolStatus
    result: NotRequired[Any]
    started_at: float
    ended_at: float


class Round(TypedDict):
    results: list[ToolOutcome]


class TurnState(TurnPayload):
    """The payload as the workers extend it, step by step: `discover` adds the allowed tools and
    the session's history, `reason` the calls it wants, `collect` each round's outcomes."""

    tools: list[dict[str, Any]]
    history: list[dict[str, Any]]
    rounds: list[Round]
    pending: NotRequired[list[ToolCall]]
    execute_started_at: NotRequired[float]


class FinishedTurn(TypedDict):
    """What `synthesize` hands to the end of the turn."""

    session_id: str
    message_id: str
    prompt: str
    owner: str  # "tenant/user": the history entry is theirs alone
    answer: str
    tools_used: list[str]


def task_name(step: str) -> str:
    """`turnstream.<step>`: the name a step's task is registered and routed under."""
    return f"{TASK_PREFIX}.{step}"


def step_of(name: str) -> str:
    """The step a task name runs (the inverse of task_name)."""
    return name.removeprefix(f"{TASK_PREFIX}.")


def turn_of(args: tuple | list | None) -> TurnRef | dict:
    """The turn a task's arguments carry: the first dict that names its session (`collect` gets
    its round's results first, then the turn; `call_tool` a TurnRef). Empty when the task
    carries none (e.g. `turn_failed`, whose arguments are the ids)."""
    return next((a for a in args or () if isinstance(a, dict) and "session_id" in a), {})


def first_task_ids(message_id: str) -> tuple[str, str]:
    """The ids of the two tasks the web tier sends: they follow from the turn, so cancelling can
    revoke them without a lookup (later steps are stopped by the turn's status, see workers.steps)."""
    return f"{message_id}-{DISCOVER}", f"{message_id}-{REASON}-1"


def first_task(app: Celery, turn: TurnPayload):
    """`discover`, by task name, with the `turn_failed` errback (it sends `reason` itself)."""
    discover_id, _ = first_task_ids(turn["message_id"])
    signature = app.signature(task_name(DISCOVER), args=(turn,), options={"task_id": discover_id, "ignore_result": True})
    signature.link_error(app.signature(task_name(TURN_FAILED), args=(turn["session_id"], turn["message_id"])))
    return signature


def send_turn(app: Celery, turn: TurnPayload, **options: object) -> None:
    """Enqueue the turn's first step on the broker (`options` go to apply_async, e.g. a retry policy)."""
    first_task(app, turn).apply_async(**options)


def held_events(kept: Sequence[Sequence[str]]) -> list:
    """Step events held for the next step (a checkpoint's `shown`, or a task argument: JSON
    pairs of an event's JSON and its dedupe name) as (StepEvent, dedupe name) pairs to publish."""
    from shared.events import StepEvent

    return [(StepEvent.model_validate_json(data), dedupe) for data, dedupe in kept]


def show_held(payload: TurnPayload, checkpoint: "Checkpoint") -> None:
    from shared.progress import Publisher  # the progress store's client: only a resume needs it here

    Publisher(payload["session_id"], payload["message_id"], fail_soft=True).publish_all(held_events(checkpoint.shown))


def revoke_turn(app: Celery, message_id: str) -> None:
    """Tell every worker to drop the turn's first tasks if they have not started."""
    app.control.revoke(list(first_task_ids(message_id)))


# --- Where a turn stands: positions and checkpoints ------------------------------------------------
# The flow is a line: discover, then per round reason -> execute (fan out) -> collect, then
# synthesize. A step's position orders it on that line, so a delivery can tell whether the turn
# has already moved past it. `collect` has its own position, after `execute`'s: a round's calls
# finish in it.
SYNTHESIZE_POSITION = 1_000_000


def position(task: str, round_: int | None = None) -> int:
    """Where `task` (discover, reason, execute, collect, synthesize) of round `round_` stands."""
    if task == DISCOVER:
        return 0
    if task == SYNTHESIZE:
        return SYNTHESIZE_POSITION
    offset = {REASON: 2, EXECUTE: 1, COLLECT: 0}[task]
    return 3 * (round_ or 1) - offset


@dataclass(frozen=True)
class Checkpoint:
    """The turn as its last finished step left it: the task to run next, its round, and the
    state it runs on (tools, history, rounds with their tool outcomes, the reasoner's pending calls)."""

    task: str
    round: int | None
    state: TurnState
    # Events (a StepEvent's JSON, its dedupe name) the step before holds to show with this one's
    # start (workers.steps.run_step_holding): a resume from this checkpoint shows them first, so a
    # worker that died between saving it and showing them loses none.
    shown: tuple[tuple[str, str], ...] = ()

    @property
    def position(self) -> int:
        return position(self.task, self.round)


def resume_turn(app: Celery, payload: TurnPayload, checkpoint: Checkpoint | None) -> str:
    """Send a turn again from its checkpoint (from its first step without one); returns the task sent.

    A checkpoint waiting for `collect` sends `execute` again: the round's calls fan out anew and
    every call whose outcome the tool-call journal holds returns it without running again. The
    events the checkpoint holds (the step before's `finished`) are shown first: once if its
    worker had shown them, by their dedupe names."""
    if checkpoint is not None and checkpoint.shown:
        show_held(payload, checkpoint)
    if checkpoint is None or checkpoint.task == DISCOVER:
        send_turn(app, payload)
        return DISCOVER
    task = EXECUTE if checkpoint.task == COLLECT else checkpoint.task
    signature = app.signature(task_name(task), args=(checkpoint.state,))
    signature.link_error(app.signature(task_name(TURN_FAILED), args=(payload["session_id"], payload["message_id"])))
    signature.apply_async()
    return task
