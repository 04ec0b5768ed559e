"""OpenTelemetry, opt-in through the standard OTEL_* variables.

Nothing is traced unless OTEL_TRACES_EXPORTER or an OTLP endpoint is set (and OTEL_SDK_DISABLED
is not true), so a default install pays nothing. When on, the Flask, Celery and Redis
instrumentations make one trace per turn: the POST's span is the parent of the Celery publish,
whose context rides in the task headers to the worker, where each step's span parents the next
publish and every Redis call. Endpoint, headers, sampling, batching and the service name are
all read by the SDK itself from the usual variables."""

import logging
import os

from opentelemetry import trace
from opentelemetry.instrumentation.utils import suppress_instrumentation

log = logging.getLogger(__name__)

# The OTEL_* variables this project relies on (the SDK reads many more; see its docs).
STANDARD_ENV = ("OTEL_SDK_DISABLED", "OTEL_SERVICE_NAME", "OTEL_RESOURCE_ATTRIBUTES", "OTEL_TRACES_EXPORTER",
                "OTEL_TRACES_SAMPLER", "OTEL_TRACES_SAMPLER_ARG", "OTEL_EXPORTER_OTLP_ENDPOINT",
                "OTEL_EXPORTER_OTLP_TRACES_ENDPOINT", "OTEL_EXPORTER_OTLP_PROTOCOL", "OTEL_EXPORTER_OTLP_HEADERS",
                "OTEL_BSP_SCHEDULE_DELAY", "OTEL_PYTHON_FLASK_EXCLUDED_URLS")
# Long-lived streams would make hour-long spans; probes and scrapes are noise.
DEFAULT_EXCLUDED_URLS = "stream/.*,ops/stream,healthz,metrics"

_configured = False

__all__ = ["enabled", "setup_tracing", "instrument_flask", "current_trace_id", "suppress_instrumentation"]


def enabled(env: dict[str, str] | None = None) -> bool:
    """Pure rule: does this environment ask for traces?"""
    env = os.environ if env is None else env
    if env.get("OTEL_SDK_DISABLED", "").strip().lower() == "true":
        return False
    exporter = env.get("OTEL_TRACES_EXPORTER", "").strip().lower()
    if exporter:
        return exporter != "none"
    return bool(env.get("OTEL_EXPORTER_OTLP_ENDPOINT") or env.get("OTEL_EXPORTER_OTLP_TRACES_ENDPOINT"))


def _exporters():
    names = [n.strip().lower() for n in os.environ.get("OTEL_TRACES_EXPORTER", "otlp").split(",") if n.strip()]
    for name in names:
        if name == "console":
            from opentelemetry.sdk.trace.export import ConsoleSpanExporter

            yield ConsoleSpanExporter()
        elif name == "otlp":
            if os.environ.get("OTEL_EXPORTER_OTLP_PROTOCOL", "http/protobuf") != "http/protobuf":
                log.warning("only the http/protobuf OTLP protocol is installed; using it")
            from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter

            yield OTLPSpanExporter()
        elif name != "none":
            log.warning("unknown OTEL_TRACES_EXPORTER %r ignored", name)


def setup_tracing(service: str) -> bool:
    """Install a tracer provider and the Celery and Redis instrumentations; False if tracing is off."""
    global _configured
    if _configured or not enabled():
        return _configured
    from opentelemetry.instrumentation.celery import CeleryInstrumentor
    from opentelemetry.instrumentation.redis import RedisInstrumentor
    from opentelemetry.sdk.resources import SERVICE_NAME, Resource
    from opentelemetry.sdk.trace import TracerProvider
    from opentelemetry.sdk.trace.export import BatchSpanProcessor

    resource = Resource.create()
    if str(resource.attributes.get(SERVICE_NAME, "")).startswith("unknown_service"):
        resource = resource.merge(Resource({SERVICE_NAME: f"turnstream-{service}"}))
    provider = TracerProvider(resource=resource)
    for exporter in _exporters():
        provider.add_span_processor(BatchSpanProcessor(exporter))
    trace.set_tracer_provider(provider)
    CeleryInstrumentor().instrument()
    RedisInstrumentor().instrument()
    _configured = True
    log.info("OpenTelemetry tracing on for %s", resource.attributes.get(SERVICE_NAME))
    return True


def instrument_flask(app) -> None:
    if not _configured:
        return
    from opentelemetry.instrumentation.flask import FlaskInstrumentor

    excluded = os.environ.get("OTEL_PYTHON_FLASK_EXCLUDED_URLS", DEFAULT_EXCLUDED_URLS)
    FlaskInstrumentor().instrument_app(app, excluded_urls=excluded)


def shutdown() -> None:
    """Flush buffered spans (a worker that exits should not lose its last turn's trace)."""
    provider = trace.get_tracer_provider()
    if _configured and hasattr(provider, "shutdown"):
        provider.shutdown()


def current_trace_id() -> str | None:
    """The active span's trace id as 32 hex digits, or None when nothing is traced."""
    context = trace.get_current_span().get_span_context()
    return format(context.trace_id, "032x") if context.is_valid else None
