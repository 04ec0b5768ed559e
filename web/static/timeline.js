// One turn on the page: the prompt, a timeline of steps and tool calls, and the answer.
//
// Events are applied in order as they arrive: a step row shows a spinner until its
// `finished` event gives its duration. A tool card appears when the call starts (`tool`
// event, status `started`) with a live elapsed time, shows a progress bar while the tool
// reports progress (`running`), and on its final event shows the outcome, the guards'
// verdicts in words, its duration and a result preview that folds away. `token` events
// stream the answer as plain text and `done` replaces it with the rendered Markdown.
// A turn that ends (failed, cancelled) stops every spinner and timer still running.

import { renderMarkdown } from "./markdown.js";
import {
  CANCELLED, CANCELLED_EVENT, DELTA_EVENT, DISCOVER, DONE, DONE_EVENT, ERROR_EVENT, EXECUTE, FAILED, FINISHED,
  REASON, RUNNING, STEP_EVENT, SYNTHESIZE, TOOL_DENIED, TOOL_ERROR, TOOL_EVENT, TOOL_OK, TOOL_RUNNING,
  TOOL_STARTED,
} from "../vocabulary.js";

const STEP_LABELS = {
  [REASON]: "Reasoning",
  [DISCOVER]: "Finding tools",
  [EXECUTE]: "Calling tools",
  [SYNTHESIZE]: "Writing the answer",
};

function el(tag, className, text) {
  const node = document.createElement(tag);
  if (className) node.className = className;
  if (text !== undefined) node.textContent = text;
  return node;
}

/** A failed turn's error is already one sentence naming its step ("Reasoning failed: …"). */
export function failureText(message) {
  return message ? message : "This turn failed.";
}

/** "412 ms" or "1.4 s". */
export function formatDuration(ms) {
  if (typeof ms !== "number" || !Number.isFinite(ms)) return "";
  return ms < 1000 ? `${Math.round(ms)} ms` : `${(ms / 1000).toFixed(ms < 10000 ? 1 : 0)} s`;
}

// The guards' verdicts in a user's words; the technical value stays in the badge's tooltip.
/** A running call's elapsed time: "0 s", "3 s", "1 min 05 s". */
export function formatElapsed(ms) {
  const seconds = Math.max(0, Math.floor(ms / 1000));
  if (seconds < 60) return `${seconds} s`;
  return `${Math.floor(seconds / 60)} min ${String(seconds % 60).padStart(2, "0")} s`;
}

const PERMISSION_WORDS = { hit: "permission remembered", miss: "permission checked now",
                           bypass: "permission checked now" };
const CACHE_WORDS = { hit: "from cache", coalesced: "shared result", miss: "fresh result", bypass: "not cached" };

/** The permission result in words: "permission remembered", "permission checked now", "denied · checked now". */
export function describePermission(permission) {
  if (permission === null || permission === undefined) return "";
  if (typeof permission !== "object") return String(permission);
  const checked = PERMISSION_WORDS[permission.memo] || "permission checked";
  if (permission.allowed === false) return `denied · ${checked.replace("permission ", "")}`;
  return checked;
}

/** The cache result in words: "from cache", "shared result", "fresh result", "not cached". */
export function describeCache(cache) {
  if (cache === null || cache === undefined) return "";
  const value = typeof cache === "object" ? String(cache.result ?? cache.status ?? "") : String(cache);
  return CACHE_WORDS[value] || value;
}

/** When an event was logged: its id is the log's `<milliseconds>-<sequence>`. */
function loggedAt(id) {
  const ms = Number(String(id || "").split("-")[0]);
  return Number.isFinite(ms) && ms > 0 ? ms : Date.now();
}

function badge(value, kind, technical) {
  const node = el("span", `badge ${kind}`);
  node.dataset.value = value;
  node.title = technical;
  node.append(el("span", "badge-value", value));
  return node;
}

export class TurnView {
  /** @param {{message_id?: string, prompt: string}} turn */
  constructor(turn) {
    this.messageId = turn.message_id || "";
    this.steps = new Map();
    this.tools = new Map();  // call_id -> card
    this.currentStep = null;
    this.eventCount = 0;
    this.terminal = null;

    this.element = el("li", "turn");
    this.element.setAttribute("aria-label", "Turn");
    const prompt = el("div", "prompt");
    prompt.append(el("span", "visually-hidden", "You asked: "), el("span", "prompt-text", turn.prompt));

    this.details = el("details", "timeline");
    this.summary = el("summary", "", "Steps");
    this.list = el("ol", "steps");
    this.list.setAttribute("aria-label", "Steps");
    this.details.append(this.summary, this.list);

    this.answer = el("div", "answer");
    this.answer.setAttribute("aria-live", "polite");
    this.answer.setAttribute("aria-label", "Answer");
    this.streaming = el("p", "streaming");
    this.problem = el("p", "problem");
    this.problem.setAttribute("role", "alert");
    this.problem.hidden = true;

    // Cancel: shown while the turn runs; what it did shows in the timeline (`onCancel` is the
    // page's DELETE, resolving to a line for the timeline).
    this.onCancel = null;
    this.cancelButton = el("button", "cancel secondary", "Cancel");
    this.cancelButton.type = "button";
    this.cancelButton.setAttribute("aria-label", "Cancel this turn");
    this.cancelButton.hidden = true;
    this.cancelButton.addEventListener("click", () => this.cancel());

    this.element.append(prompt, this.cancelButton, this.details, this.answer, this.problem);
    this.setId(this.messageId);
  }

  setCancellable(on) {
    this.cancelButton.hidden = !on || !this.onCancel || this.terminal !== null;
  }

  async cancel() {
    if (!this.onCancel) return;
    this.cancelButton.disabled = true;
    this.cancelButton.textContent = "Cancelling…";
    const line = await this.onCancel();
    this.note(line, "cancel");
    this.cancelButton.hidden = true;
  }

  setId(messageId) {
    this.messageId = messageId;
    if (messageId) this.element.dataset.messageId = messageId;
  }

  /** Pending until the server accepts the post; the user sees their prompt at once. */
  sending() {
    this.details.open = true;
    this.element.dataset.status = "sending";
    this.note("Sending…", "pending");
  }

  /** Show a problem in plain words (a refused post, a failed turn). */
  fail(message) {
    this.problem.textContent = message;
    this.problem.hidden = false;
    this.element.dataset.status = FAILED;
    this.removeNotes("pending");
  }

  /** A line in the timeline that is not an event: sending, connection dropped and resumed. */
  note(text, kind) {
    const li = el("li", `note ${kind}`, text);
    this.list.append(li);
    return li;
  }

  removeNotes(kind) {
    for (const node of this.list.querySelectorAll(`.note.${kind}`)) node.remove();
  }

  /** Record a resumed connection, so a drop is visible in the timeline itself. */
  resumed(afterId) {
    const reconnects = Number(this.element.dataset.reconnects || 0) + 1;
    this.element.dataset.reconnects = String(reconnects);
    const text = afterId ? `Connection dropped; resumed after event ${afterId}` : "Connection dropped; resumed";
    const last = this.list.lastElementChild;
    if (last && last.classList.contains("resume") && last.dataset.after === String(afterId)) {
      // Dropped again before anything new arrived: one line, with a count.
      last.dataset.times = String(Number(last.dataset.times) + 1);
      last.textContent = `${text} (${last.dataset.times} times)`;
      return;
    }
    const note = this.note(text, "resume");
    note.dataset.after = String(afterId);
    note.dataset.times = "1";
  }

  /** Apply one progress event (already deduplicated by id). */
  apply(type, data, id) {
    this.eventCount += 1;
    this.element.dataset.eventCount = String(this.eventCount);
    this.element.dataset.lastEventId = id;
    this.removeNotes("pending");
    if (!this.element.dataset.status || this.element.dataset.status === "sending") this.element.dataset.status = RUNNING;
    const handler = { [STEP_EVENT]: this.step, [TOOL_EVENT]: this.tool, [DELTA_EVENT]: this.token,
                      [DONE_EVENT]: this.done, [ERROR_EVENT]: this.error, [CANCELLED_EVENT]: this.cancelled }[type];
    if (handler) handler.call(this, data, id);
  }

  step(data, id) {
    // reason and execute repeat, one row per round (the event carries `round`).
    const key = data.round ? `${data.step}-${data.round}` : data.step;
    let step = this.steps.get(key);
    if (!step) {
      step = { row: el("li", "step"), stateText: el("span", "visually-hidden"), duration: el("span", "duration"),
               tools: el("ol", "tools") };
      step.row.dataset.step = data.step;
      if (data.round) step.row.dataset.round = String(data.round);
      step.row.dataset.eventId = id;
      const icon = el("span", "icon");
      icon.setAttribute("aria-hidden", "true");
      const head = el("div", "step-head");
      const label = STEP_LABELS[data.step] || data.step;
      head.append(icon, el("span", "step-name", data.round > 1 ? `${label} (round ${data.round})` : label),
                  step.stateText, step.duration);
      step.tools.setAttribute("aria-label", "Tool calls");
      step.row.append(head, step.tools);
      this.steps.set(key, step);
      this.list.append(step.row);
    }
    if (data.status === FINISHED) {
      step.row.classList.remove("running");
      step.row.classList.add("finished");
      step.stateText.textContent = " finished in";
      step.duration.textContent = formatDuration(data.duration_ms);
    } else {
      step.row.classList.add("running");
      step.stateText.textContent = " in progress";
      this.currentStep = step;
    }
  }

  tool(data, id) {
    let card = this.tools.get(data.call_id);
    if (!card) {
      card = this.toolCard(data, id);
      this.tools.set(data.call_id, card);
    }
    card.row.dataset.eventId = id;
    if (data.status === TOOL_STARTED) return;
    if (data.status === TOOL_RUNNING) {
      this.showProgress(card, data);
      return;
    }
    this.finishTool(card, data);
  }

  /** The card of one call, shown from its first event with a live elapsed time. */
  toolCard(data, id) {
    const card = { row: el("li", "tool running"), name: el("span", "tool-name", data.tool),
                   elapsed: el("span", "duration elapsed"), startedAt: loggedAt(id), timer: null };
    card.row.dataset.tool = data.tool;
    card.row.dataset.callId = data.call_id;
    card.row.dataset.status = TOOL_STARTED;
    const head = el("div", "tool-head");
    card.elapsed.setAttribute("aria-label", "Elapsed time");
    head.append(card.name, card.elapsed);
    const args = el("code", "args", JSON.stringify(data.args ?? {}));
    args.setAttribute("aria-label", "Arguments");
    card.row.append(head, args);
    const tick = () => { card.elapsed.textContent = formatElapsed(Date.now() - card.startedAt); };
    tick();
    card.timer = setInterval(tick, 250);
    (this.currentStep ? this.currentStep.tools : this.list).append(card.row);
    return card;
  }

  showProgress(card, data) {
    card.row.dataset.status = TOOL_RUNNING;
    if (!card.progress) {
      card.progress = el("progress", "tool-progress");
      card.progress.setAttribute("aria-label", `${data.tool} progress`);
      card.progressText = el("span", "progress-text");
      const line = el("div", "progress-line");
      line.append(card.progress, card.progressText);
      card.row.querySelector(".args").after(line);
    }
    if (typeof data.total === "number" && data.total > 0) {
      card.progress.max = data.total;
      card.progress.value = Math.min(data.progress, data.total);
    } else {
      card.progress.removeAttribute("value");  // no total: an indeterminate bar
    }
    const share = typeof data.total === "number" && data.total > 0 ? `${Math.round((100 * data.progress) / data.total)}%` : "";
    card.progressText.textContent = [share, data.message || ""].filter(Boolean).join(" · ");
  }

  finishTool(card, data) {
    this.stopTimer(card);
    const row = card.row;
    row.className = `tool ${data.status}`;
    row.dataset.status = data.status;
    if (data.status === TOOL_DENIED) card.name.textContent = `You may not use ${data.tool}`;
    else if (data.status === TOOL_ERROR) card.name.textContent = `${data.tool} failed`;
    card.elapsed.classList.remove("elapsed");
    card.elapsed.removeAttribute("aria-label");
    card.elapsed.textContent = formatDuration(data.duration_ms);
    if (card.progress) card.progress.closest(".progress-line").remove();

    const badges = el("div", "badges");
    const permission = describePermission(data.permission);
    if (permission) badges.append(badge(permission, "permission", `permission: ${JSON.stringify(data.permission)}`));
    const cache = describeCache(data.cache);
    if (cache) badges.append(badge(cache, `cache cache-${data.cache}`, `cache: ${data.cache}`));
    if (badges.childElementCount) row.append(badges);

    if (data.error) row.append(el("p", "tool-error", data.error));
    if (data.status === TOOL_OK && data.result_preview && data.result_preview !== '""') {
      const fold = el("details", "result");
      fold.open = true;
      const preview = el("pre", "preview", data.result_preview);
      preview.setAttribute("aria-label", "Result preview");
      fold.append(el("summary", "", "Result"), preview);
      row.append(fold);
    }
  }

  stopTimer(card) {
    if (card.timer) clearInterval(card.timer);
    card.timer = null;
  }

  /** The turn ended: no tool timer keeps ticking, whatever call did not return, and no Cancel. */
  stopTools(outcome) {
    for (const card of this.tools.values()) {
      if (!card.timer) continue;
      this.stopTimer(card);
      card.row.classList.remove("running");
      card.row.classList.add("stopped");
      card.row.dataset.status = "stopped";
      card.elapsed.classList.remove("elapsed");
      card.elapsed.textContent = `${outcome} after ${formatElapsed(Date.now() - card.startedAt)}`;
    }
    this.setCancellable(false);
  }

  token(data) {
    if (!this.streaming.isConnected) this.answer.replaceChildren(this.streaming);
    this.streaming.textContent += data.text;
  }

  done(data) {
    this.terminal = DONE_EVENT;
    this.stopSteps("stopped", " stopped");
    this.stopTools("stopped");
    this.element.dataset.status = DONE;
    this.showAnswer(data.answer);
  }

  error(data) {
    this.terminal = ERROR_EVENT;
    this.stopSteps("failed", " failed");
    this.stopTools("stopped");
    this.streaming.classList.add("stopped");  // what streamed stays, without its typing cursor
    this.fail(failureText(data.message));
  }

  cancelled(data) {
    this.terminal = CANCELLED_EVENT;
    this.stopSteps("stopped", " stopped");
    this.stopTools("cancelled");
    this.fail(`This turn was cancelled${data.message && data.message !== "cancelled" ? `: ${data.message}` : "."}`);
    this.element.dataset.status = CANCELLED;
  }

  /** The turn ended: no step is in progress any more, so no spinner keeps spinning. */
  stopSteps(state, text) {
    for (const step of this.steps.values()) {
      if (!step.row.classList.contains("running")) continue;
      step.row.classList.remove("running");
      step.row.classList.add(state);
      step.stateText.textContent = text;
    }
  }

  showAnswer(answer) {
    this.answer.replaceChildren(renderMarkdown(answer));
  }

  /** A turn from history: its recorded answer or error; the timeline loads when opened. */
  fromRecord(record, loadEvents) {
    this.element.dataset.status = record.status || "";
    if (record.answer) this.showAnswer(record.answer);
    if (record.status === FAILED) this.fail(failureText(record.error));
    if (record.status === CANCELLED) this.fail("This turn was cancelled.");
    this.summary.textContent = "Steps (open to load)";
    const load = async () => {
      this.details.removeEventListener("toggle", load);
      this.summary.textContent = "Steps";
      const applied = await loadEvents();
      if (!applied) this.note("The step log of this turn has expired.", "expired");
    };
    this.details.addEventListener("toggle", load);
  }
}
