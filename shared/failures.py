"""A failed turn as one sentence a person can read: the step in words, then the cause.

    Reasoning failed: the model server at http://127.0.0.1:8080/v1 answered HTTP 500.
    Calling tools failed: the step ran past its time limit of 150 s (TURNSTREAM_TASK_TIME_LIMIT_S).
    Reasoning failed: the llm worker crashed 3 times in this step.

Rules: the step is named once, in the words the page uses for it; the cause is the first
real error in the operator's terms (a URL, a status, a limit and the variable that sets it),
never a chain of exception classes; the sentence ends with one period. Only an error nobody
foresaw (a bug) names its exception class, once, so the worker log can be searched for it.

The sentence is built where the failure is seen (the step itself, the chain's errback, the
time-limit watchdog, the delivery counter) and recorded as the turn's `error`; the `error`
event is published from that record. Rejected: passing exceptions up to the chain's errback
and wording them there. Celery serializes a task's exception into its base class and message
(a StepFailed arrives as a RuntimeError, its step lost), so the errback can only prefix what
it gets, which is how messages read "reason failed: RuntimeError: reason failed: …"."""

from shared.defaults import LLM_QUEUE, STEP_QUEUES
from shared.vocabulary import CALL_TOOL, COLLECT, DISCOVER, EXECUTE, REASON, SYNTHESIZE

# The words the page shows for each step (web/static/timeline.js STEP_LABELS); a tool call
# and the chord's collect belong to `execute`.
STEP_LABELS = {DISCOVER: "Finding tools", REASON: "Reasoning", EXECUTE: "Calling tools",
               SYNTHESIZE: "Writing the answer"}
TASK_STEPS = {CALL_TOOL: EXECUTE, COLLECT: EXECUTE}


class StepFailed(RuntimeError):
    """A step that could not complete. Its args are (step, cause), so it survives pickling and
    Celery's JSON exception serialization rebuilds it with both; str() is the sentence."""

    def __init__(self, step: str, cause: str):
        super().__init__(step, cause)
        self.step = step_of(step)
        self.cause = cause

    def __str__(self) -> str:
        return sentence(self.step, self.cause)


def step_of(task_or_step: str | None) -> str | None:
    """The user-facing step of a task name (`turnstream.call_tool` -> `execute`)."""
    if not task_or_step:
        return None
    name = str(task_or_step).rpartition(".")[2]
    return TASK_STEPS.get(name, name)


def label(step: str | None) -> str:
    return STEP_LABELS.get(step or "", "A step")


def worker_kind(task: str | None) -> str:
    """Which kind of worker ("llm" or "tools", as operators start them) runs a task, by the queue
    the task is routed to (STEP_QUEUES, celery_config's task_routes): a task, not a step, because
    a step may run inside another step's task (`collect`, a part of execute, runs on the llm
    queue). The tools worker serves the discover and tools queues (shared.cli.processes)."""
    queue = STEP_QUEUES.get(str(task or "").rpartition(".")[2])
    return "llm" if queue == LLM_QUEUE else "tools"


def sentence(step: str | None, cause: str) -> str:
    """`<Step> failed: <cause>.`; a cause that already names the step is kept as it is."""
    cause = " ".join(str(cause).split()).rstrip(".") or "no reason was given"
    if cause.startswith(f"{label(step)} failed"):
        return f"{cause}."
    return f"{label(step)} failed: {cause}."


def time_limit_cause(seconds: float, variable: str = "TURNSTREAM_TASK_TIME_LIMIT_S") -> str:
    return f"the step ran past its time limit of {seconds:g} s ({variable})"


def crash_cause(task: str | None, crashes: int, doing: str | None = None) -> str:
    """The cause for a `task` whose deliveries crashed their worker `crashes` times."""
    times = "once" if crashes == 1 else f"{crashes} times"
    return f"the {worker_kind(task)} worker crashed {times} {doing or 'in this step'}"


def unexpected_cause(exc: BaseException) -> str:
    """A failure nobody foresaw: its class and message once, pointing at the worker log."""
    text = str(exc).strip()
    return f"an unexpected {type(exc).__name__}{f' ({text})' if text else ''}; the worker log has the details"
