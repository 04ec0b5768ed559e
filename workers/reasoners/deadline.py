"""A wall-clock deadline for HTTP calls to a model server: a transport for httpx2 (the openai
SDK's HTTP client) for which a request's `timeout` is the whole call's budget, from sending the
request to the last byte.

httpx2's timeouts are per operation: a read timeout restarts with every byte received, so a
server that sends an SSE keep-alive comment every second (which the SDK's decoder swallows)
would hold a streamed answer open forever. This transport notes when each request starts and
checks the clock after the headers and on every chunk of the body, keep-alive comments
included; past the budget it closes the response and raises httpx2.ReadTimeout. A server that
sends nothing at all is cut off by the ordinary read timeout, which the caller sets to the
time left. The one case it cannot cut exactly is a server that trickles bytes until just
before the deadline and then goes silent: that read still waits out its own read timeout.

Rejected: running each call in a thread and abandoning it at the deadline (a leaked thread
per timeout, and tokens it may still emit after the step has failed); async calls under
`asyncio.timeout` (exact, but it needs an event loop inside sync Celery steps under every pool,
gevent included)."""

import time
from collections.abc import Iterator

import httpx2


def budget_of(request: httpx2.Request) -> float | None:
    """The request's budget in seconds: its read timeout (callers set every timeout to it)."""
    return (request.extensions.get("timeout") or {}).get("read")


class _DeadlineStream(httpx2.SyncByteStream):
    def __init__(self, inner: httpx2.SyncByteStream, request: httpx2.Request, deadline: float):
        self._inner, self._request, self._deadline = inner, request, deadline

    def __iter__(self) -> Iterator[bytes]:
        for chunk in self._inner:
            self.check()
            yield chunk

    def check(self) -> None:
        if time.monotonic() > self._deadline:
            self.close()
            raise httpx2.ReadTimeout("the call ran past its deadline", request=self._request)

    def close(self) -> None:
        self._inner.close()


class DeadlineTransport(httpx2.HTTPTransport):
    """httpx2.HTTPTransport whose requests end at `timeout` after they start, however the server trickles."""

    def handle_request(self, request: httpx2.Request) -> httpx2.Response:
        budget = budget_of(request)
        started = time.monotonic()
        response = super().handle_request(request)
        if budget is None:
            return response
        stream = _DeadlineStream(response.stream, request, started + budget)
        stream.check()  # headers that arrive after the deadline are already too late
        response.stream = stream
        return response
