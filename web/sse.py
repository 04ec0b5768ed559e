"""One way to open an SSE response, for turn streams and the /ops stream alike.

The body starts with a `retry:` hint and a comment, so the headers flush and the browser's
`onopen` fires before the first event; proxies are told not to buffer or cache it."""

from collections.abc import Iterable

from flask import Response, current_app, stream_with_context


def sse_response(events: Iterable[str], retry_ms: int, opened: str, with_first: bool = False) -> Response:
    """`events` (rendered SSE text) after the opening line; `opened` is the opening comment.
    `with_first`: the first chunk of `events` is ready at once (a turn stream's replay), so the
    opening goes out with it, in one write."""
    def body():
        opening = f"retry: {retry_ms}\n: {opened}\n\n"
        if not with_first:
            yield opening
            yield from events
            return
        chunks = iter(events)
        try:
            yield opening + next(chunks, "")
            yield from chunks
        finally:  # a client gone at the first write: the stream's clean-up runs now, not at collection
            getattr(chunks, "close", lambda: None)()

    response = current_app.response_class(stream_with_context(body()), mimetype="text/event-stream")
    response.headers["Cache-Control"] = "no-cache"
    response.headers["X-Accel-Buffering"] = "no"
    return response
