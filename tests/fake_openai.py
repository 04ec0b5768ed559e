"""A local OpenAI-compatible chat-completions server speaking the exact streamed wire format:
`data: {chat.completion.chunk}` lines, tool_call deltas with index, id and argument fragments,
a final chunk with finish_reason, then `data: [DONE]`.

It plays a scripted model: offered tools and no tool results yet -> it calls weather(Paris)
and calculator(6*7+1) in one message, the arguments split across chunks; tool results present
-> it calls nothing (finish_reason "stop"); no tools offered -> it streams an answer built
from the tool results it was sent. A prompt containing "slow" makes it stall, to test timeouts;
"fail later" makes it answer 500 once tool results are in, to fail a later round; "again and
again" makes it call tools in every round, to hit the round limit.
Every request body is kept in `requests` for the tests to inspect."""

import json
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

ANSWER_PIECES = ["The weather ", "in Paris ", "is light rain ", "and 6 * 7 + 1 ", "is 43."]


def chunk(delta: dict, finish: str | None = None, index: int = 0) -> dict:
    return {"id": "chatcmpl-fake", "object": "chat.completion.chunk", "created": int(time.time()),
            "model": "fake-model", "choices": [{"index": index, "delta": delta, "finish_reason": finish}]}


def tool_call_chunks() -> list[dict]:
    """Two tool calls, as real servers send them: id/name first, then argument fragments by index."""
    return [
        chunk({"role": "assistant", "content": None}),
        chunk({"tool_calls": [{"index": 0, "id": "call_w1", "type": "function",
                               "function": {"name": "weather", "arguments": ""}}]}),
        chunk({"tool_calls": [{"index": 0, "function": {"arguments": '{"ci'}}]}),
        chunk({"tool_calls": [{"index": 0, "function": {"arguments": 'ty": "Par'}}]}),
        chunk({"tool_calls": [{"index": 0, "function": {"arguments": 'is"}'}}]}),
        chunk({"tool_calls": [{"index": 1, "id": "call_c2", "type": "function",
                               "function": {"name": "calculator", "arguments": '{"expression":'}}]}),
        chunk({"tool_calls": [{"index": 1, "function": {"arguments": ' "6 * 7 + 1"}'}}]}),
        chunk({}, finish="tool_calls"),
    ]


class FakeOpenAI:
    def __init__(self, stall_s: float = 5.0):
        self.requests: list[dict] = []
        self.stall_s = stall_s
        fake = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, *args) -> None:
                pass

            def do_POST(self) -> None:  # noqa: N802 - http.server's naming
                body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
                fake.requests.append(body)
                if not self.path.endswith("/chat/completions") or not body.get("stream"):
                    self.send_error(404)
                    return
                prompt = " ".join(str(m.get("content")) for m in body["messages"] if m["role"] == "user")
                if "slow" in prompt:
                    time.sleep(fake.stall_s)
                if "fail later" in prompt and any(m["role"] == "tool" for m in body["messages"]):
                    self.send_error(500, "the model broke")
                    return
                self.send_response(200)
                self.send_header("Content-Type", "text/event-stream")
                self.send_header("Connection", "close")
                self.end_headers()
                for piece in fake.script(body):
                    self.wfile.write(f"data: {json.dumps(piece)}\n\n".encode())
                    self.wfile.flush()
                self.wfile.write(b"data: [DONE]\n\n")
                self.wfile.flush()
                self.close_connection = True

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.server.daemon_threads = True
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)

    @property
    def base_url(self) -> str:
        return f"http://127.0.0.1:{self.server.server_address[1]}/v1"

    def script(self, body: dict) -> list[dict]:
        has_results = any(m["role"] == "tool" for m in body["messages"])
        greedy = any("again and again" in str(m.get("content")) for m in body["messages"] if m["role"] == "user")
        if body.get("tools") and (greedy or not has_results):
            return tool_call_chunks()
        if body.get("tools"):
            return [chunk({"role": "assistant", "content": ""}), chunk({}, finish="stop")]
        return [chunk({"role": "assistant", "content": ""}),
                *(chunk({"content": piece}) for piece in ANSWER_PIECES), chunk({}, finish="stop")]

    def __enter__(self) -> "FakeOpenAI":
        self.thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self.server.shutdown()
        self.server.server_close()
