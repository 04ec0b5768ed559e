// The page: sign in with a token, pick or start a session, post prompts and watch each turn.
// No framework and no build step: ES modules served as they are.

import { STATES, TurnFollower } from "./stream.js";
import { FAILED, FINAL_STATUSES } from "../vocabulary.js";
import { TurnView, failureText } from "./timeline.js";

const TOKEN_KEY = "turnstream.token";
const FINAL = new Set(FINAL_STATUSES);
const $ = (id) => document.getElementById(id);

const state = {
  token: sessionStorage.getItem(TOKEN_KEY) || "",
  sessionId: null,
  followers: new Set(),
  titles: new Map(),
  moves: 0,  // sessions opened and prompts sent: sign-in's own session load must not undo one
};

// --- API ---------------------------------------------------------------------------------

class ApiError extends Error {
  constructor(status, body) {
    super(body.message || `HTTP ${status}`);
    this.status = status;
  }
}

const authHeaders = () => ({ Authorization: `Bearer ${state.token}` });

async function api(path, options = {}) {
  const response = await fetch(path, { ...options, headers: { ...authHeaders(), ...(options.headers || {}) } });
  const body = await response.json().catch(() => ({}));
  if (response.status === 401) {
    signOut(`Your token was refused: ${body.message || "unauthorized"}. Sign in again.`);
  }
  if (!response.ok) throw new ApiError(response.status, body);
  return body;
}

const sessionPath = (sid) => `/api/sessions/${encodeURIComponent(sid)}/messages`;

function newSessionId() {
  const bytes = crypto.getRandomValues(new Uint8Array(8));
  return "s" + Array.from(bytes, (b) => b.toString(16).padStart(2, "0")).join("");
}

/** Who the token says you are, for display only (the server checks the signature). */
function tokenSubject(token) {
  try {
    const claims = JSON.parse(atob(token.split(".")[1].replace(/-/g, "+").replace(/_/g, "/")));
    return claims.tenant ? `${claims.sub} @ ${claims.tenant}` : String(claims.sub || "");
  } catch {
    return "";
  }
}

// --- Connection indicator ----------------------------------------------------------------------

function showConnection(name, detail) {
  const node = $("connection");
  node.dataset.state = name;
  node.textContent = name === "resumed" && detail ? `${STATES.resumed} after event ${detail}` : STATES[name] || name;
  if (name === "lost" && detail) node.textContent += `: ${detail}`;
}

// --- Sign-in ---------------------------------------------------------------------------------

async function signIn(token) {
  state.token = token.trim();
  $("signin-error").textContent = "";
  try {
    await api("/api/sessions");
  } catch (error) {
    if (!(error instanceof ApiError && error.status === 401)) $("signin-error").textContent = error.message;
    return;
  }
  sessionStorage.setItem(TOKEN_KEY, state.token);
  $("who").textContent = tokenSubject(state.token);
  $("signin").hidden = true;
  $("app").hidden = false;
  $("account").hidden = false;
  $("connection").hidden = false;
  const moves = state.moves;
  await loadSessions();
  if (state.moves === moves) await openSession(sessionFromHash());
  $("prompt").focus();
}

function signOut(message = "") {
  for (const follower of state.followers) follower.stop();
  state.followers.clear();
  state.token = "";
  sessionStorage.removeItem(TOKEN_KEY);
  $("app").hidden = true;
  $("account").hidden = true;
  $("connection").hidden = true;
  $("signin").hidden = false;
  $("signin-error").textContent = message;
  $("turns").replaceChildren();
  $("session-list").replaceChildren();
  showConnection("idle");
  $("token").focus();
}

async function demoToken() {
  const response = await fetch("/api/dev/token", { method: "POST" });
  const body = await response.json();
  if (!response.ok) {
    $("signin-error").textContent = body.message || "could not mint a demo token";
    return;
  }
  $("token").value = body.token;
  await signIn(body.token);
}

// --- Sessions --------------------------------------------------------------------------------

function sessionFromHash() {
  const match = /^#session=([A-Za-z0-9][A-Za-z0-9_-]{0,63})$/.exec(location.hash);
  return match ? match[1] : null;
}

function sessionButton(sid) {
  const li = document.createElement("li");
  const button = document.createElement("button");
  button.type = "button";
  button.className = "session";
  button.dataset.sessionId = sid;
  fillTitle(button, sid);
  button.addEventListener("click", () => {
    location.hash = `session=${sid}`;
    closeDrawer();
  });
  li.append(button);
  return li;
}

function markCurrentSession() {
  for (const button of document.querySelectorAll("#session-list .session")) {
    if (button.dataset.sessionId === state.sessionId) button.setAttribute("aria-current", "page");
    else button.removeAttribute("aria-current");
  }
}

async function loadSessions() {
  const { sessions } = await api("/api/sessions");
  // A session's title is its first prompt; the list shows ids until those arrive.
  $("session-list").replaceChildren(...sessions.map(sessionButton));
  markCurrentSession();
  await Promise.all(sessions.filter((sid) => !state.titles.has(sid)).slice(0, 30).map(async (sid) => {
    try {
      const { messages } = await api(sessionPath(sid));
      if (messages.length) setTitle(sid, messages[0].prompt, messages[0].created_at);
    } catch {
      // The list still works with the id as the title.
    }
  }));
}

/** "Nov 26, 14:03:21": when a session started, so two with the same first prompt differ. */
function formatStarted(seconds) {
  return new Date(seconds * 1000).toLocaleString(undefined, {
    month: "short", day: "numeric", hour: "2-digit", minute: "2-digit", second: "2-digit" });
}

/** A session's title is its first prompt and the time it was sent. */
function setTitle(sid, prompt, startedAt) {
  const text = prompt.length > 60 ? `${prompt.slice(0, 57)}…` : prompt;
  state.titles.set(sid, { text, time: startedAt ? formatStarted(startedAt) : "", iso: startedAt
    ? new Date(startedAt * 1000).toISOString() : "" });
  for (const other of document.querySelectorAll("#session-list .session")) {
    if (state.titles.has(other.dataset.sessionId)) fillTitle(other, other.dataset.sessionId);
  }
  if (sid === state.sessionId) $("chat-title").textContent = titleText(sid);
}

/** Two sessions with the same prompt in the same second still differ: by their ids' ends. */
function labelOf(sid) {
  const title = state.titles.get(sid);
  const twins = [...state.titles.entries()].filter(([other, t]) => other !== sid && t.text === title.text
    && t.time === title.time);
  return twins.length ? `${title.time} · #${sid.slice(-4)}` : title.time;
}

function titleText(sid) {
  const title = state.titles.get(sid);
  return title ? [title.text, labelOf(sid)].filter(Boolean).join(" · ") : sid;
}

function fillTitle(button, sid) {
  const title = state.titles.get(sid);
  if (!title) {
    button.textContent = sid;
    return;
  }
  const text = document.createElement("span");
  text.className = "session-prompt";
  text.textContent = title.text;
  const time = document.createElement("time");
  time.className = "session-time";
  time.dateTime = title.iso;
  time.textContent = labelOf(sid);
  button.replaceChildren(text, time);
  button.title = `${title.text} (${sid})`;
}

function addSessionToList(sid, prompt) {
  if (!document.querySelector(`#session-list .session[data-session-id="${sid}"]`)) {
    $("session-list").prepend(sessionButton(sid));
  }
  if (!state.titles.has(sid)) setTitle(sid, prompt, Date.now() / 1000);
  markCurrentSession();
}

async function openSession(sid) {
  state.moves += 1;
  for (const follower of state.followers) follower.stop();
  state.followers.clear();
  showConnection("idle");
  state.sessionId = sid;
  $("turns").replaceChildren();
  $("chat-title").textContent = sid ? titleText(sid) : "New chat";
  markCurrentSession();
  if (!sid) return;
  let body;
  try {
    body = await api(sessionPath(sid));
  } catch (error) {
    if (error.status !== 401) $("chat-title").textContent = `Cannot open this session: ${error.message}`;
    return;
  }
  if (sid !== state.sessionId) return;  // another session was opened meanwhile
  for (const record of body.messages) {
    const view = new TurnView(record);
    $("turns").append(view.element);
    if (!FINAL.has(record.status) && record.stream_url) {
      view.details.open = true;
      follow(view, sid, record.message_id, record.stream_url);
    } else {
      view.fromRecord(record, () => loadEvents(view, sid, record.message_id));
    }
  }
  scrollToEnd();
}

async function loadEvents(view, sid, mid) {
  try {
    const body = await api(`${sessionPath(sid)}/${encodeURIComponent(mid)}/events`);
    for (const event of body.events) view.apply(event.type, event.data, event.id);
    return body.events.length > 0;
  } catch (error) {
    view.note(`Cannot load the steps: ${error.message}`, "expired");
    return true;
  }
}

// --- Turns -----------------------------------------------------------------------------------

/** Cancel a running turn (DELETE); the line the timeline shows for what happened. */
async function cancelTurn(sid, mid) {
  try {
    await api(`${sessionPath(sid)}/${encodeURIComponent(mid)}`, { method: "DELETE" });
    return "You cancelled this turn.";
  } catch (error) {
    if (error.status === 409) return `Too late to cancel: ${error.message}.`;
    return `Could not cancel: ${error.message}`;
  }
}

function follow(view, sid, mid, streamUrl) {
  view.onCancel = () => cancelTurn(sid, mid);
  view.setCancellable(true);
  const follower = new TurnFollower({
    streamUrl,
    eventsUrl: `${sessionPath(sid)}/${encodeURIComponent(mid)}/events`,
    headers: authHeaders,
    onEvent: (type, data, id) => {
      view.apply(type, data, id);
      scrollToEnd();
    },
    onState: (name, detail) => {
      view.element.dataset.connection = name;
      if (name === "resumed") view.resumed(detail);
      if (name === "ended" || name === "lost") {
        state.followers.delete(follower);
        view.setCancellable(false);
        if (!view.terminal) refreshRecord(view, sid, mid);
      }
      showConnection(name, detail);
    },
  });
  state.followers.add(follower);
  follower.start();
}

/** The turn ended without its terminal event reaching us (its log expired): show the record. */
async function refreshRecord(view, sid, mid) {
  try {
    const record = await api(`${sessionPath(sid)}/${encodeURIComponent(mid)}`);
    if (record.answer) view.showAnswer(record.answer);
    if (record.status === FAILED) view.fail(failureText(record.error));
  } catch {
    // The indicator already says the turn cannot be followed.
  }
}

async function send(event) {
  event.preventDefault();
  const prompt = $("prompt").value;
  if (!prompt.trim()) {
    $("prompt").focus();
    return;
  }
  state.moves += 1;
  const sid = state.sessionId || newSessionId();
  if (!state.sessionId) {
    state.sessionId = sid;
    history.replaceState(null, "", `#session=${sid}`);
  }
  const view = new TurnView({ prompt });
  view.sending();
  $("turns").append(view.element);
  scrollToEnd();
  $("prompt").value = "";
  let body;
  try {
    body = await api(sessionPath(sid), {
      method: "POST",
      headers: { "Content-Type": "application/json" },
      body: JSON.stringify({ prompt }),
    });
  } catch (error) {
    view.fail(`Could not send: ${error.message}`);
    $("prompt").value = prompt;
    return;
  }
  view.setId(body.message_id);
  addSessionToList(sid, prompt);
  follow(view, sid, body.message_id, body.stream_url);
}

function scrollToEnd() {
  const turns = $("turns");
  turns.scrollTop = turns.scrollHeight;
}

// --- Narrow screens: the session list is a drawer ------------------------------------------------

function setDrawer(open) {
  $("sessions").classList.toggle("open", open);
  $("sessions-toggle").setAttribute("aria-expanded", String(open));
}

function closeDrawer() {
  if ($("sessions").classList.contains("open")) {
    setDrawer(false);
    $("sessions-toggle").focus();
  }
}

// --- Wiring ----------------------------------------------------------------------------------

function init() {
  $("signin-form").addEventListener("submit", (event) => {
    event.preventDefault();
    signIn($("token").value);
  });
  const demo = $("demo-token");
  if (demo) demo.addEventListener("click", demoToken);
  $("signout").addEventListener("click", () => signOut());
  $("new-session").addEventListener("click", () => {
    history.pushState(null, "", location.pathname);
    openSession(null);
    closeDrawer();
    $("prompt").focus();
  });
  $("prompt-form").addEventListener("submit", send);
  $("prompt").addEventListener("keydown", (event) => {
    if (event.key === "Enter" && !event.shiftKey && !event.isComposing) {
      event.preventDefault();
      $("prompt-form").requestSubmit();
    }
  });
  $("sessions-toggle").addEventListener("click", () => setDrawer(!$("sessions").classList.contains("open")));
  document.addEventListener("keydown", (event) => {
    if (event.key === "Escape") closeDrawer();
  });
  window.addEventListener("hashchange", () => {
    const sid = sessionFromHash();
    if (state.token && sid !== state.sessionId) openSession(sid);
  });
  showConnection("idle");
  if (state.token) signIn(state.token);
  else $("token").focus();
}

init();
