"""Reconnects: 1,000 random cuts while a turn streams, turnstream against stock flask-sse.

A client reads a few events, hangs up, and reconnects with Last-Event-ID, over and over, while
events are published at a steady pace. turnstream replays the log after that id; stock flask-sse
ignores the header (its issue #39), so whatever was published while the client was away is lost.
Prints events lost and duplicated for each, in the same run, on the same progress redis-server.

    python bench/sse_reconnect.py [--cuts 1000]
"""

import argparse
import json
import random
import tempfile
import threading
import time
from pathlib import Path

import httpx
from _common import start_stock_flask_sse  # noqa: E402  (puts the repo on sys.path)
from flask_sse import Message
from httpx_sse import connect_sse

from shared.events import DoneEvent, DeltaEvent
from shared.identity import Principal, issue_stream_token
from shared.progress import Publisher
from tests.stack import Stack

def read_with_cuts(url: str, cuts: int, parse, cutting_done: threading.Event) -> tuple[list[int], int]:
    """Read 0-3 events per connection, hang up, reconnect with the last id; after `cuts` cuts, read to
    the end marker. Returns the sequence numbers seen and the cuts made."""
    rng = random.Random(7)
    seen: list[int] = []
    made, last_id = 0, None
    with httpx.Client(timeout=10) as client:
        while True:
            if made >= cuts:
                cutting_done.set()
            headers = {"Last-Event-ID": last_id} if last_id else {}
            read_before_cut = rng.randint(0, 3) if made < cuts else 10**9
            with connect_sse(client, "GET", url, headers=headers) as source:
                events = (sse for sse in source.iter_sse() if sse.data)
                for _, sse in zip(range(read_before_cut), events):
                    seq = parse(json.loads(sse.data))
                    if seq is None:
                        return seen, made
                    seen.append(seq)
                    last_id = sse.id or last_id
            made += 1


def run(url: str, publish, publish_end, parse, cuts: int) -> dict:
    """Publish every 2 ms while a client cuts and reconnects `cuts` times; count what it lost."""
    cutting_done = threading.Event()
    result: dict = {}
    reader = threading.Thread(target=lambda: result.update(zip(("seen", "cuts"),
                                                               read_with_cuts(url, cuts, parse, cutting_done))))
    reader.start()
    time.sleep(0.2)
    sent = 0
    while not cutting_done.is_set():
        publish(sent)
        sent += 1
        time.sleep(0.002)
    time.sleep(0.2)  # the final connection is open before the end marker
    publish_end()
    reader.join(30)
    seen = result.get("seen", [])
    return {"sent": sent, "received": len(seen), "cuts": result.get("cuts", 0),
            "lost": len(set(range(sent)) - set(seen)), "duplicated": len(seen) - len(set(seen))}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--cuts", type=int, default=1000)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        stack = Stack(Path(tmp), TURNSTREAM_PROGRESS_LOG_MAXLEN="1000000")
        stock = None
        try:
            stack.start_redis()
            stack.apply_env()
            stack.start_web()
            sid, mid = "reconnect", "bench"
            publisher = Publisher(sid, mid)
            token = issue_stream_token(Principal("bench", "bench", ()), sid, mid)
            ours = run(f"{stack.base_url}/stream/{sid}/{mid}?token={token}",
                       lambda seq: publisher.publish(DeltaEvent(text=str(seq))),
                       lambda: publisher.publish(DoneEvent(answer="end")),
                       lambda data: int(data["text"]) if "text" in data else None, args.cuts)

            stock, port = start_stock_flask_sse(stack.env["PROGRESS_REDIS_URL"], stack.log_dir)
            progress = stack.client("progress")
            theirs = run(f"http://127.0.0.1:{port}/stream?channel=bench",
                         lambda seq: progress.publish("bench", json.dumps(Message({"seq": seq}).to_dict())),
                         lambda: progress.publish("bench", json.dumps(Message({"end": True}).to_dict())),
                         lambda data: data.get("seq"), args.cuts)
        finally:
            if stock:
                stock.stop()
            stack.stop()
    for name, r in (("turnstream", ours), ("flask-sse", theirs)):
        print(f"{name:<11} cuts={r['cuts']:<5} sent={r['sent']:<6} received={r['received']:<6} "
              f"lost={r['lost']:<6} duplicated={r['duplicated']}")
    print(f"events lost per 1,000 sent: turnstream {1000 * ours['lost'] / max(ours['sent'], 1):.1f}, "
          f"flask-sse {1000 * theirs['lost'] / max(theirs['sent'], 1):.1f}")


if __name__ == "__main__":
    main()
