// One turn on the page: the prompt, a timeline of steps and tool calls, and the answer.
//
// Events are applied in order as they arrive: a step row shows a spinner until its
// `finished` event gives its duration; a tool row shows the call's arguments, its
// permission and cache results, duration and a preview of the result; `token` events
// stream the answer as plain text and `done` replaces it with the rendered Markdown.

import { renderMarkdown } from "./markdown.js";

const STEP_LABELS = {
  reason: "Reasoning",
  discover: "Finding tools",
  execute: "Calling tools",
  synthesize: "Writing the answer",
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

const MEMO_WORDS = { hit: "memo hit", miss: "verifier (memo miss)", bypass: "verifier (memo bypassed)" };

/** The permission result in words: "allowed · memo hit", "denied · verifier (memo miss)". */
export function describePermission(permission) {
  if (permission === null || permission === undefined) return "";
  if (typeof permission !== "object") return String(permission);
  const parts = [];
  if ("allowed" in permission) parts.push(permission.allowed ? "allowed" : "denied");
  for (const [key, value] of Object.entries(permission)) {
    if (key === "allowed" || value === null || value === undefined || value === false) continue;
    if (key === "memo" && MEMO_WORDS[value]) parts.push(MEMO_WORDS[value]);
    else if (key === "source" || key === "via" || key === "decision") parts.push(String(value));
    else if (value === true) parts.push(key.replaceAll("_", " "));
    else if (typeof value === "object") parts.push(`${key.replaceAll("_", " ")} ${JSON.stringify(value)}`);
    else parts.push(`${key.replaceAll("_", " ")} ${value}`);
  }
  return parts.join(" · ");
}

/** The cache result in words: "hit", "miss", "coalesced", "bypass". */
export function describeCache(cache) {
  if (cache === null || cache === undefined) return "";
  if (typeof cache !== "object") return String(cache);
  return String(cache.result ?? cache.status ?? JSON.stringify(cache));
}

function badge(label, value, kind) {
  const node = el("span", `badge ${kind}`);
  node.dataset.value = value;
  node.append(el("span", "badge-label", `${label} `), el("span", "badge-value", value));
  return node;
}

export class TurnView {
  /** @param {{message_id?: string, prompt: string}} turn */
  constructor(turn) {
    this.messageId = turn.message_id || "";
    this.steps = new Map();
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

    this.element.append(prompt, this.details, this.answer, this.problem);
    this.setId(this.messageId);
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
    this.element.dataset.status = "failed";
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
    if (!this.element.dataset.status || this.element.dataset.status === "sending") this.element.dataset.status = "running";
    const handler = { step: this.step, tool: this.tool, token: this.token, done: this.done,
                      error: this.error, cancelled: this.cancelled }[type];
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
    if (data.status === "finished") {
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
    const row = el("li", `tool ${data.status}`);
    row.dataset.eventId = id;
    row.dataset.tool = data.tool;
    row.dataset.status = data.status;
    const head = el("div", "tool-head");
    let headline;
    if (data.status === "denied") headline = `You may not use ${data.tool}`;
    else if (data.status === "error") headline = `${data.tool} failed`;
    else headline = data.tool;
    head.append(el("span", "tool-name", headline), el("span", "duration", formatDuration(data.duration_ms)));
    row.append(head);

    const args = el("code", "args", JSON.stringify(data.args ?? {}));
    args.setAttribute("aria-label", "Arguments");
    row.append(args);

    const badges = el("div", "badges");
    const permission = describePermission(data.permission);
    if (permission) badges.append(badge("permission", permission, "permission"));
    const cache = describeCache(data.cache);
    if (cache) badges.append(badge("cache", cache, `cache cache-${cache}`));
    if (badges.childElementCount) row.append(badges);

    if (data.error) row.append(el("p", "tool-error", data.error));
    if (data.status === "ok" && data.result_preview && data.result_preview !== '""') {
      const preview = el("pre", "preview", data.result_preview);
      preview.setAttribute("aria-label", "Result preview");
      row.append(preview);
    }
    (this.currentStep ? this.currentStep.tools : this.list).append(row);
  }

  token(data) {
    if (!this.streaming.isConnected) this.answer.replaceChildren(this.streaming);
    this.streaming.textContent += data.text;
  }

  done(data) {
    this.terminal = "done";
    this.element.dataset.status = "done";
    this.showAnswer(data.answer);
  }

  error(data) {
    this.terminal = "error";
    this.stopSteps("failed", " failed");
    this.fail(failureText(data.message));
  }

  cancelled(data) {
    this.terminal = "cancelled";
    this.stopSteps("stopped", " stopped");
    this.fail(`This turn was cancelled${data.message && data.message !== "cancelled" ? `: ${data.message}` : "."}`);
    this.element.dataset.status = "cancelled";
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
    if (record.status === "failed") this.fail(failureText(record.error));
    if (record.status === "cancelled") this.fail("This turn was cancelled.");
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
