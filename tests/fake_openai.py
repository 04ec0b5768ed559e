"""A local OpenAI-compatible chat-completions server, for failure injection. Real-server behaviour
is tested against llama-cpp-python's own server (tests/test_openai_llama_server.py).

It speaks both wire formats: a `chat.completion` object, or (with "stream": true)
`data: {chat.completion.chunk}` lines, tool_call deltas with index, id and argument fragments,
a final chunk with finish_reason, then `data: [DONE]`.

It plays a scripted model: offered tools and no tool results yet -> it calls weather(Paris)
and calculator(6*7+1) in one message; tool results present -> it calls nothing
(finish_reason "stop"); no tools offered -> it writes an answer built from ANSWER_PIECES.
Words in the user's prompt inject failures:
- "silent": it never sends a byte (until the fake stops); "silent later": likewise once tool results are in.
- "fail now": HTTP 500 to every request; "fail later": HTTP 500 once tool results are in.
- "again and again": it calls tools in every round, to hit the round limit.
Streamed requests only (the answer):
- "keep-alive": headers, then an SSE comment every `keepalive_s`, forever.
- "endless": headers, then an answer piece every `keepalive_s`, forever.
- "empty stream": 200 with an event-stream content type and no body, as llama-cpp-python's
  server answers a streamed request it refuses.
- "truncated": the first answer pieces, then the connection closes without finish_reason or [DONE].
Every request body is kept in `requests` for the tests to inspect."""

import json
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

ANSWER_PIECES = ["The weather ", "in Paris ", "is light rain ", "and 6 * 7 + 1 ", "is 43."]
TOOL_CALLS = [("call_w1", "weather", ['{"ci', 'ty": "Par', 'is"}']),
              ("call_c2", "calculator", ['{"expression":', ' "6 * 7 + 1"}'])]


def chunk(delta: dict, finish: str | None = None, index: int = 0) -> dict:
    return {"id": "chatcmpl-fake", "object": "chat.completion.chunk", "created": int(time.time()),
            "model": "fake-model", "choices": [{"index": index, "delta": delta, "finish_reason": finish}]}


def tool_call_chunks() -> list[dict]:
    """The tool calls as real servers stream them: id/name first, then argument fragments by index."""
    out = [chunk({"role": "assistant", "content": None})]
    for index, (call_id, name, fragments) in enumerate(TOOL_CALLS):
        out.append(chunk({"tool_calls": [{"index": index, "id": call_id, "type": "function",
                                          "function": {"name": name, "arguments": ""}}]}))
        out += [chunk({"tool_calls": [{"index": index, "function": {"arguments": f}}]}) for f in fragments]
    return [*out, chunk({}, finish="tool_calls")]


def completion(message: dict, finish: str) -> dict:
    return {"id": "chatcmpl-fake", "object": "chat.completion", "created": int(time.time()), "model": "fake-model",
            "choices": [{"index": 0, "message": message, "finish_reason": finish}],
            "usage": {"prompt_tokens": 1, "completion_tokens": 1, "total_tokens": 2}}


class FakeOpenAI:
    def __init__(self, keepalive_s: float = 1.0):
        self.requests: list[dict] = []
        self.keepalive_s = keepalive_s
        self.stopping = threading.Event()
        fake = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, *args) -> None:
                pass

            def do_POST(self) -> None:  # noqa: N802 - http.server's naming
                body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
                fake.requests.append(body)
                if not self.path.endswith("/chat/completions"):
                    self.send_error(404)
                    return
                try:
                    fake.reply(self, body)
                except (BrokenPipeError, ConnectionResetError):
                    pass  # the client gave up: what the timeout tests want
                self.close_connection = True

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.server.daemon_threads = True
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)

    @property
    def base_url(self) -> str:
        return f"http://127.0.0.1:{self.server.server_address[1]}/v1"

    def reply(self, handler: BaseHTTPRequestHandler, body: dict) -> None:
        prompt = " ".join(str(m.get("content")) for m in body["messages"] if m["role"] == "user")
        has_results = any(m["role"] == "tool" for m in body["messages"])
        if "silent" in prompt and ("silent later" not in prompt or has_results):
            self.stopping.wait()
            return
        if "fail now" in prompt or ("fail later" in prompt and has_results):
            handler.send_error(500, "the model broke")
            return
        if not body.get("stream"):
            self._send(handler, "application/json", json.dumps(self.message(body, prompt)).encode())
            return
        if "empty stream" in prompt:
            self._send(handler, "text/event-stream", b"")
            return
        handler.send_response(200)
        handler.send_header("Content-Type", "text/event-stream")
        handler.send_header("Connection", "close")
        handler.end_headers()
        if "keep-alive" in prompt or "endless" in prompt:
            piece = f"data: {json.dumps(chunk({'content': 'la '}))}\n\n".encode()
            beat = b": keep-alive\n\n" if "keep-alive" in prompt else piece
            while not self.stopping.wait(self.keepalive_s):
                handler.wfile.write(beat)
                handler.wfile.flush()
            return
        pieces = self.chunks(body, prompt)
        if "truncated" in prompt:
            pieces = pieces[:3]
        for piece in pieces:
            handler.wfile.write(f"data: {json.dumps(piece)}\n\n".encode())
            handler.wfile.flush()
        if "truncated" not in prompt:
            handler.wfile.write(b"data: [DONE]\n\n")
            handler.wfile.flush()

    @staticmethod
    def _send(handler: BaseHTTPRequestHandler, content_type: str, data: bytes) -> None:
        handler.send_response(200)
        handler.send_header("Content-Type", content_type)
        handler.send_header("Content-Length", str(len(data)))
        handler.send_header("Connection", "close")
        handler.end_headers()
        handler.wfile.write(data)

    @staticmethod
    def wants_tools(body: dict, prompt: str) -> bool:
        has_results = any(m["role"] == "tool" for m in body["messages"])
        return bool(body.get("tools")) and ("again and again" in prompt or not has_results)

    def message(self, body: dict, prompt: str) -> dict:
        """The whole reply, not streamed."""
        if self.wants_tools(body, prompt):
            calls = [{"id": call_id, "type": "function", "function": {"name": name, "arguments": "".join(fragments)}}
                     for call_id, name, fragments in TOOL_CALLS]
            return completion({"role": "assistant", "content": None, "tool_calls": calls}, "tool_calls")
        text = "" if body.get("tools") else "".join(ANSWER_PIECES)
        return completion({"role": "assistant", "content": text}, "stop")

    def chunks(self, body: dict, prompt: str) -> list[dict]:
        """The reply as a stream's chunks."""
        if self.wants_tools(body, prompt):
            return tool_call_chunks()
        if body.get("tools"):
            return [chunk({"role": "assistant", "content": ""}), chunk({}, finish="stop")]
        return [chunk({"role": "assistant", "content": ""}),
                *(chunk({"content": piece}) for piece in ANSWER_PIECES), chunk({}, finish="stop")]

    def __enter__(self) -> "FakeOpenAI":
        self.thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self.stopping.set()
        self.server.shutdown()
        self.server.server_close()
