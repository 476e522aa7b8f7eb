"""Prometheus metrics of one server (``GET /metrics``), in a registry of the app's own so several apps
in one process (tests, embedding) do not collide. Names follow Prometheus conventions (``_total``
counters, ``_seconds`` histograms), labelled by model and version."""
from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter, Enum, Gauge, Histogram, generate_latest
from prometheus_client import CONTENT_TYPE_LATEST

LATENCY_BUCKETS = (0.0005, 0.001, 0.002, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0)
BATCH_BUCKETS = (1, 2, 4, 8, 16, 32, 64, 128, 256, 512)
MODEL_STATES = ("loading", "ready", "unloading", "unavailable")

CONTENT_TYPE = CONTENT_TYPE_LATEST


class Metrics:
    def __init__(self):
        self.registry = r = CollectorRegistry()
        mv = ("model", "version")
        self.success = Counter("ember_request_success", "Inference requests answered with 200", mv, registry=r)
        self.failure = Counter("ember_request_failure", "Inference requests answered with an error, by status",
                               mv + ("code",), registry=r)
        self.inferences = Counter("ember_inference_count", "Rows inferred (a batch of n rows counts n)", mv, registry=r)
        self.executions = Counter("ember_execution_count", "Model executions (one per batch)", mv, registry=r)
        self.request_s = Histogram("ember_request_duration_seconds", "Infer request latency, body read to response",
                                   mv, buckets=LATENCY_BUCKETS, registry=r)
        self.queue_s = Histogram("ember_queue_duration_seconds", "Time a request waited for an execution",
                                 mv, buckets=LATENCY_BUCKETS, registry=r)
        self.compute_s = Histogram("ember_compute_duration_seconds", "Model execution time per batch",
                                   mv, buckets=LATENCY_BUCKETS, registry=r)
        self.batch_size = Histogram("ember_batch_size", "Rows per execution", mv, buckets=BATCH_BUCKETS, registry=r)
        self.pending = Gauge("ember_pending_requests", "Requests queued or executing", mv, registry=r)
        self.state = Enum("ember_model_state", "Load state of each model version", mv, states=list(MODEL_STATES),
                          registry=r)

        self._children = {}  # (metric, labels) -> labelled child: labels() costs more than the observation

    def _child(self, metric, *labels):
        key = (id(metric), labels)
        c = self._children.get(key)
        if c is None:
            c = self._children[key] = metric.labels(*labels)
        return c

    def executed(self, model, queue_waits, compute_s, rows):
        labels = (model.name, model.version)
        queue = self._child(self.queue_s, *labels)
        for w in queue_waits:
            queue.observe(w)
        self._child(self.compute_s, *labels).observe(compute_s)
        self._child(self.batch_size, *labels).observe(rows)
        self._child(self.executions, *labels).inc()
        self._child(self.inferences, *labels).inc(rows)

    def request_done(self, name, version, status, seconds):
        if status == 200:
            self._child(self.success, name, version).inc()
            self._child(self.request_s, name, version).observe(seconds)
        else:
            self._child(self.failure, name, version, str(status)).inc()

    def set_state(self, name, version, state):
        self.state.labels(name, str(version)).state(state)

    def render(self) -> bytes:
        return generate_latest(self.registry)
