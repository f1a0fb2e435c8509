"""Prometheus metrics: request latency, LLM tokens, the job queue, and chats that lost memory.

Each app has its own registry, so several apps (or tests) in one process never
share counters. Queue depth is read from the store at scrape time, so it is
right across replicas and workers, not just this process.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator

from prometheus_client import CollectorRegistry, Counter, Histogram
from prometheus_client.core import GaugeMetricFamily, Metric
from prometheus_client.registry import Collector

from ..llm.base import LLM, Completion, CompletionStream, JSONSchema, Messages, StreamEnd
from ..models import Usage
from ..store.base import Store

LATENCY_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0)


class Metrics:
    def __init__(self, store: Store) -> None:
        self.registry = CollectorRegistry()
        self.requests = Histogram(
            "retain_http_request_duration_seconds",
            "HTTP request latency (for streams: until the last byte).",
            ["method", "route", "status"],
            buckets=LATENCY_BUCKETS,
            registry=self.registry,
        )
        self.llm_tokens = Counter(
            "retain_llm_tokens", "LLM tokens used, by kind (prompt or completion).", ["kind"], registry=self.registry
        )
        self.llm_calls = Counter("retain_llm_calls", "LLM calls made.", registry=self.registry)
        self.llm_failures = Counter("retain_llm_failures", "LLM calls that raised.", registry=self.registry)
        self.chat_without_memory = Counter(
            "retain_chat_memory_unavailable",
            "Chat replies that went ahead without memory because the search failed or was slow.",
            registry=self.registry,
        )
        self.registry.register(_JobCollector(store))

    def record_usage(self, usage: Usage) -> None:
        self.llm_tokens.labels("prompt").inc(usage.prompt_tokens)
        self.llm_tokens.labels("completion").inc(usage.completion_tokens)
        self.llm_calls.inc(max(usage.llm_calls, 1))


class _JobCollector(Collector):
    def __init__(self, store: Store) -> None:
        self.store = store

    def collect(self) -> Iterable[Metric]:
        family = GaugeMetricFamily(
            "retain_jobs", "Background jobs by status (queued: the queue depth).", labels=["status"]
        )
        counts = self.store.job_counts()
        for status in ("queued", "running", "done", "dead"):
            family.add_metric([status], counts.get(status, 0))
        yield family


class MeteredLLM(LLM):
    """Wraps an LLM and counts its calls and tokens; behaves exactly like the wrapped one."""

    name = "metered"

    def __init__(self, inner: LLM, metrics: Metrics) -> None:
        self.inner = inner
        self.model = inner.model
        self.metrics = metrics

    def _complete(self, checked: Messages, schema: JSONSchema | None, stream: bool) -> Completion | CompletionStream:
        try:
            result = self.inner.complete(checked, schema, stream=stream)
        except Exception:
            self.metrics.llm_failures.inc()
            raise
        if isinstance(result, Completion):
            self.metrics.record_usage(result.usage)
            return result
        return CompletionStream(self._counted(result), model=result.model)

    def _counted(self, stream: CompletionStream) -> Iterator[str | StreamEnd]:
        try:
            yield from stream
        except Exception:
            self.metrics.llm_failures.inc()
            raise
        self.metrics.record_usage(stream.usage)
        yield StreamEnd(usage=stream.usage, model=stream.model)

    def close(self) -> None:
        self.inner.close()
