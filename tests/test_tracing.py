"""OpenTelemetry, switched on by the standard OTEL_* variables: one trace per turn, from the POST through
every step and Redis call, exported over OTLP/HTTP to a collector this test runs; the trace id is in
the turn's events and in the JSON logs, next to the session, message and task ids."""

import json
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import httpx
import pytest
from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import (ExportTraceServiceRequest,
                                                                        ExportTraceServiceResponse)
from prometheus_client.parser import text_string_to_metric_families

from shared import tracing
from shared.cli import processes
from shared.turn_flow import task_name
from shared.vocabulary import STEPS
from tests.sse import post_prompt, read_stream
from tests.stack import Stack


class Collector(ThreadingHTTPServer):
    """A minimal OTLP/HTTP trace receiver: keeps (trace id, span name, service) of every span."""

    def __init__(self):
        super().__init__(("127.0.0.1", processes.free_port()), _Handler)
        self.spans: list[dict] = []
        self.lock = threading.Lock()

    @property
    def endpoint(self) -> str:
        return f"http://127.0.0.1:{self.server_address[1]}"

    def trace(self, trace_id: str) -> list[dict]:
        with self.lock:
            return [span for span in self.spans if span["trace_id"] == trace_id]


class _Handler(BaseHTTPRequestHandler):
    def do_POST(self):
        request = ExportTraceServiceRequest()
        request.ParseFromString(self.rfile.read(int(self.headers["Content-Length"])))
        received = []
        for resource_spans in request.resource_spans:
            attributes = {a.key: a.value.string_value for a in resource_spans.resource.attributes}
            for scope_spans in resource_spans.scope_spans:
                received += [{"trace_id": span.trace_id.hex(), "name": span.name,
                              "service": attributes.get("service.name"),
                              "scope": scope_spans.scope.name} for span in scope_spans.spans]
        with self.server.lock:
            self.server.spans.extend(received)
        body = ExportTraceServiceResponse().SerializeToString()
        self.send_response(200)
        self.send_header("Content-Type", "application/x-protobuf")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, *args):
        pass


@pytest.fixture(scope="module")
def collector():
    server = Collector()
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield server
    server.shutdown()


@pytest.fixture(scope="module")
def traced_stack(tmp_path_factory, collector, stack):
    """A second system with tracing on. This test process stays pointed at the session stack (whose
    environment also holds the shared test secret, so its tokens work on both)."""
    system = Stack(tmp_path_factory.mktemp("traced"), OTEL_EXPORTER_OTLP_ENDPOINT=collector.endpoint,
                   OTEL_BSP_SCHEDULE_DELAY="200", TURNSTREAM_WORKER_METRICS_PORT=str(processes.free_port()))
    with system.running(name="traced-worker"):
        yield system


def test_tracing_is_opt_in_through_otel_variables():
    assert not tracing.enabled({})
    assert tracing.enabled({"OTEL_EXPORTER_OTLP_ENDPOINT": "http://collector:4318"})
    assert tracing.enabled({"OTEL_TRACES_EXPORTER": "console"})
    assert not tracing.enabled({"OTEL_TRACES_EXPORTER": "none", "OTEL_EXPORTER_OTLP_ENDPOINT": "http://c:4318"})
    assert not tracing.enabled({"OTEL_SDK_DISABLED": "true", "OTEL_TRACES_EXPORTER": "otlp"})


def test_one_trace_follows_a_turn_from_the_post_through_every_step_and_redis(traced_stack, collector, session_id):
    base_url = traced_stack.base_url
    body = post_prompt(base_url, session_id, "What is the weather in Paris?").json()
    events = read_stream(base_url, body["stream_url"])
    assert events[-1].type == "done"

    trace_ids = {event.data.get("trace_id") for event in events}
    assert len(trace_ids) == 1 and None not in trace_ids, "every event carries the turn's one trace id"
    trace_id = trace_ids.pop()

    expected_runs = {f"run/{task_name(step)}" for step in STEPS}
    deadline = time.monotonic() + 30
    spans = collector.trace(trace_id)
    while not expected_runs <= {s["name"] for s in spans} and time.monotonic() < deadline:
        time.sleep(0.3)
        spans = collector.trace(trace_id)

    names = {span["name"] for span in spans}
    assert expected_runs <= names, names
    assert any(name.startswith("POST /api/sessions/") for name in names), "the POST is in the trace"
    assert any(name.startswith("apply_async/") for name in names), "each step is published in the trace"
    redis_services = {span["service"] for span in spans if "redis" in span["scope"]}
    assert redis_services == {"turnstream-web", "turnstream-worker"}, "Redis calls of both tiers are in it"

    def logged(name: str) -> list[dict]:
        lines = [json.loads(line) for line in traced_stack.log(name).splitlines() if line.startswith("{")]
        return [line for line in lines if line.get("trace_id") == trace_id]

    accepted = [line for line in logged("web") if line["message"] == "turn accepted"]
    assert accepted and accepted[0]["session_id"] == session_id and accepted[0]["message_id"] == body["message_id"]
    # At info a worker logs one line per turn ("turn done"; the per-task lines are at debug), and
    # every line it logs about this turn carries the trace id with the turn's and the task's ids.
    done = [line for line in logged("traced-worker") if line["message"] == "turn done"]
    assert done and done[0]["message_id"] == body["message_id"] and done[0]["task_id"]
    assert done[0]["task_name"] == task_name("synthesize")
    lines = [json.loads(line) for line in traced_stack.log("traced-worker").splitlines() if line.startswith("{")]
    assert all(line.get("trace_id") == trace_id for line in lines if line.get("message_id") == body["message_id"])


def test_a_worker_serves_its_own_metrics_when_given_a_port(traced_stack, session_id):
    """Workers on other hosts than the web tier are scraped on TURNSTREAM_WORKER_METRICS_PORT."""
    body = post_prompt(traced_stack.base_url, session_id, "calculate 6 * 7").json()
    assert read_stream(traced_stack.base_url, body["stream_url"])[-1].type == "done"
    port = traced_stack.env["TURNSTREAM_WORKER_METRICS_PORT"]
    text = httpx.get(f"http://127.0.0.1:{port}/metrics", timeout=10).text
    counts = {s.labels["step"]: s.value for family in text_string_to_metric_families(text)
              if family.name == "turnstream_step_duration_seconds"
              for s in family.samples if s.name.endswith("_count") and s.labels["outcome"] == "ok"}
    assert all(counts[step] >= 1 for step in STEPS), counts
