// Follows one turn's progress events.
//
// EventSource reconnects by itself after a dropped connection and resends the last event id
// (Last-Event-ID); the server replays the turn's log after it. The follower also drops any
// event whose id it has already applied, so a line never shows twice even if a replay
// overlaps. If the stream is refused outright (EventSource gives up), it falls back to
// polling the same log over the JSON API.

import { EVENT_TYPES, FINAL_STATUSES, TERMINAL_EVENTS } from "../vocabulary.js";

const TERMINAL = new Set(TERMINAL_EVENTS);
const FINAL = new Set(FINAL_STATUSES);
const POLL_MS = 1000;

/** States a follower reports: what the connection indicator shows. */
export const STATES = {
  idle: "No turn in progress",
  connecting: "Connecting…",
  connected: "Connected",
  reconnecting: "Connection lost — reconnecting…",
  resumed: "Resumed",
  polling: "Following by polling",
  ended: "Turn finished",
  lost: "Cannot follow this turn",
};

export class TurnFollower {
  /**
   * @param {object} options
   * @param {string} options.streamUrl  the turn's SSE URL (carries its own stream token)
   * @param {string} options.eventsUrl  the JSON polling fallback for the same log
   * @param {() => object} options.headers  Authorization headers for the fallback
   * @param {(type: string, data: object, id: string) => void} options.onEvent
   * @param {(state: string, detail?: string) => void} options.onState
   */
  constructor({ streamUrl, eventsUrl, headers, onEvent, onState }) {
    Object.assign(this, { streamUrl, eventsUrl, headers, onEvent, onState });
    this.seen = new Set();
    this.lastId = null;
    this.dropped = false;
    this.done = false;
    this.source = null;
    this.timer = null;
  }

  start() {
    this.onState("connecting");
    const source = new EventSource(this.streamUrl);
    this.source = source;
    source.onopen = () => {
      if (this.dropped) this.onState("resumed", this.lastId);
      else this.onState("connected");
    };
    source.onerror = (event) => {
      // A server-sent `event: error` also reaches onerror; only transport errors matter here.
      if (this.done || event instanceof MessageEvent) return;
      if (source.readyState === EventSource.CLOSED) {
        this.source = null;
        this.poll();
        return;
      }
      this.dropped = true;
      this.onState("reconnecting");
    };
    for (const type of EVENT_TYPES) {
      source.addEventListener(type, (event) => {
        // The `error` listener also hears transport errors: those are not MessageEvents.
        if (event instanceof MessageEvent) this.accept(type, event.lastEventId, event.data);
      });
    }
  }

  stop() {
    this.done = true;
    if (this.source) this.source.close();
    clearTimeout(this.timer);
  }

  /** Apply an event once, by id; a terminal event ends the follow. */
  accept(type, id, rawData) {
    if (this.done || !id || this.seen.has(id)) return;
    let data;
    try {
      data = typeof rawData === "string" ? JSON.parse(rawData) : rawData;
    } catch {
      return;
    }
    this.seen.add(id);
    this.lastId = id;
    this.onEvent(type, data, id);
    if (TERMINAL.has(type)) {
      this.stop();
      this.onState("ended");
    }
  }

  /** The fallback: read the log after the last applied id until the turn ends. */
  async poll() {
    if (this.done) return;
    this.onState("polling");
    const url = this.lastId ? `${this.eventsUrl}?after=${encodeURIComponent(this.lastId)}` : this.eventsUrl;
    try {
      const response = await fetch(url, { headers: this.headers() });
      if (response.status === 401 || response.status === 404) {
        const body = await response.json().catch(() => ({}));
        this.stop();
        this.onState("lost", body.message || response.statusText);
        return;
      }
      if (response.ok) {
        const body = await response.json();
        for (const event of body.events) this.accept(event.type, event.id, event.data);
        if (!this.done && FINAL.has(body.status)) {
          this.stop();
          this.onState("ended");
          return;
        }
      }
    } catch {
      // Offline for a moment: try again on the next tick.
    }
    if (!this.done) this.timer = setTimeout(() => this.poll(), POLL_MS);
  }
}
