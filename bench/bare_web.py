"""Baseline for bench/capacity.py: the least a web tier can do for turnstream's contract.

POST /turns appends an `accepted` entry to a new Redis stream on the progress server, sends the
bare 4-task chain (bench/noop_app.py, each step appending one entry, the last `done`) and answers
202 with the stream's URL; GET /turns/<id>/events replays that stream from its start and follows
it (XREAD BLOCK) as Server-Sent Events until `done`. Same gunicorn config as turnstream's web
(deploy/gunicorn.conf.py: gevent, access log), same broker, same progress server.

What it leaves out is what turnstream adds: auth (JWT), sessions and their owners, the rate
limit, the turn record and checkpoints, step claims, tool guards, cancellation, metrics, the
shared subscription. So `turnstream / bare web` is turnstream's own cost, and `bare web / bare
chain` is the cost of HTTP + an event log + SSE that any implementation of the contract pays.
`POST /turns?durable=1` adds the round trips of the guarantees (noop_app.durable_step), `fewest`
and `overlap` the same writes in fewer."""

import uuid

import jwt
from celery import chain
from flask import Flask, Response, jsonify, request

import noop_app
from shared.defaults import JWT_ALGORITHM
from shared.identity import API_AUDIENCE
from shared.settings import get_settings

QUEUES = ("noop_tools", "noop_llm")
app = Flask(__name__)


@app.get("/healthz")
def healthz():
    return jsonify(ok=True)


@app.post("/turns")
def post_turn():
    """`?durable=1`: the turn is also recorded and each step makes a durable step's round trips
    (noop_app.durable_step): the floor of the contract with its guarantees; `?durable=fewest`:
    the same writes in the fewest round trips; `?durable=overlap`: those sent two at a time;
    `?durable=mandated`: overlap, plus what other issues require at its least (a checked token,
    rate limit and session owner with the record, the tool call's two guards)."""
    turn_id = uuid.uuid4().hex
    key = f"bare:{turn_id}"
    payload = {"log": key}
    if request.args.get("durable") == "mandated":
        # What other issues require of every turn, at its least: the caller's token checked (PyJWT,
        # as turnstream's own), and the rate limit and session owner checked with the record write.
        token = request.headers.get("Authorization", "").removeprefix("Bearer ")
        jwt.decode(token, get_settings().secret_key(), algorithms=[JWT_ALGORITHM], audience=API_AUDIENCE)
    if request.args.get("durable"):
        payload["record"] = f"bare-record:{turn_id}"
        payload["durable"] = request.args["durable"]
        record = {"status": "queued"}
        if payload["durable"] == "mandated":
            noop_app.transaction(noop_app.broker(), [("INCR", "bare-rate"), ("GET", "bare-owner"),
                                                     ("HSET", payload["record"], "status", "queued")])
        else:
            noop_app.broker().hset(payload["record"], mapping=record)
    noop_app.event_log().xadd(key, {"event": "accepted"})
    chain(*(noop_app.app.signature("noop.step", queue=QUEUES[n % 2]) for n in range(noop_app.STEPS)))(payload)
    return jsonify(message_id=turn_id, stream_url=f"/turns/{turn_id}/events"), 202


@app.get("/turns/<turn_id>/events")
def events(turn_id: str):
    key = f"bare:{turn_id}"

    def stream():
        last = "0"
        while True:
            for _, entries in noop_app.event_log().xread({key: last}, block=30_000) or []:
                for entry_id, fields in entries:
                    last = entry_id
                    name = fields[b"event"].decode()
                    yield f"id: {entry_id.decode()}\nevent: {name}\ndata: {{}}\n\n"
                    if name == "done":
                        noop_app.event_log().delete(key)
                        return

    return Response(stream(), mimetype="text/event-stream")
