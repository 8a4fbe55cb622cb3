"""Prometheus metrics for the server (prometheus-client), on a registry of its own per app.

Series (all prefixed ``offramp_``): ``requests_total{route}``, ``request_errors_total{route,code}``,
``request_latency_seconds{route}`` (histogram), ``batch_size`` (histogram of inputs per model call),
``exit_layer`` (histogram of the layer each input exited at), ``inputs_total``, ``shadow_inputs_total``,
``layers_run_total``, ``queue_inputs``, ``policy_info{policy,config}``, ``policy_threshold``,
``target_speedup``, ``realised_speedup`` (compute, shadow rows included) and ``exit_speedup`` (where
inputs exited) over the last ``speedup_window`` inputs.
"""

from __future__ import annotations

import collections
import json
import threading

import numpy as np
from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest
from prometheus_client.exposition import CONTENT_TYPE_LATEST

from ..policies import Policy
from .runner import BatchOutput

LATENCY_BUCKETS = (0.002, 0.005, 0.01, 0.02, 0.05, 0.1, 0.2, 0.5, 1.0, 2.0, 5.0, 10.0, 30.0)
CONTENT_TYPE = CONTENT_TYPE_LATEST


class ServeMetrics:
    """The server's counters, histograms and gauges, plus the sliding window behind the speed-up gauges."""

    def __init__(self, exits: list[int], depth: int, window: int = 1024):
        self.registry = CollectorRegistry(auto_describe=True)
        r = self.registry
        self.requests = Counter("offramp_requests", "HTTP requests handled", ["route"], registry=r)
        self.errors = Counter(
            "offramp_request_errors", "requests answered with an error", ["route", "code"], registry=r
        )
        self.latency = Histogram(
            "offramp_request_latency_seconds",
            "request latency",
            ["route"],
            buckets=LATENCY_BUCKETS,
            registry=r,
        )
        sizes = tuple(float(2**i) for i in range(11))
        self.batch_size = Histogram("offramp_batch_size", "inputs per model call", buckets=sizes, registry=r)
        self.exit_layer = Histogram(
            "offramp_exit_layer",
            "layer each input exited at",
            buckets=tuple(float(e) for e in exits),
            registry=r,
        )
        self.inputs = Counter("offramp_inputs", "inputs answered", registry=r)
        self.shadow = Counter(
            "offramp_shadow_inputs", "inputs run through every exit for control", registry=r
        )
        self.layers = Counter("offramp_layers_run", "transformer layers computed", registry=r)
        self.queue = Gauge("offramp_queue_inputs", "inputs waiting for the model", registry=r)
        self.policy = Gauge(
            "offramp_policy_info", "the default exit policy (value 1)", ["policy", "config"], registry=r
        )
        self.threshold = Gauge("offramp_policy_threshold", "the default policy's threshold", registry=r)
        self.target = Gauge("offramp_target_speedup", "label-free control target (0: off)", registry=r)
        self.realised = Gauge(
            "offramp_realised_speedup",
            "layer-count speed-up of recent inputs, shadow rows included",
            registry=r,
        )
        self.exit_speedup = Gauge(
            "offramp_exit_speedup", "speed-up by where recent inputs exited", registry=r
        )
        self._depth = depth
        self._recent: collections.deque[tuple[int, int]] = collections.deque(maxlen=window)
        self._lock = threading.Lock()

    def observe_batch(self, output: BatchOutput, size: int) -> None:
        """Record one model call: its size, every input's exit layer, and the layers it cost."""
        result = output.result
        self.batch_size.observe(size)
        for layer in result.exit_layer.tolist():
            self.exit_layer.observe(layer)
        self.inputs.inc(len(result))
        self.shadow.inc(int(output.shadow.sum()))
        self.layers.inc(int(result.layers_run.sum()))
        with self._lock:
            self._recent.extend(zip(result.layers_run.tolist(), output.exit_cost.tolist(), strict=True))
            run = np.array([r for r, _ in self._recent], dtype=np.float64)
            cost = np.array([c for _, c in self._recent], dtype=np.float64)
        if run.size:
            self.realised.set(self._depth * run.size / run.sum())
            self.exit_speedup.set(self._depth * cost.size / cost.sum())

    def set_policy(self, policy: Policy, target: float | None) -> None:
        """Show the current default policy, its threshold and the control target."""
        self.policy.clear()
        config = json.dumps(policy.to_config(), sort_keys=True, default=str)
        self.policy.labels(policy=policy.kind, config=config).set(1)
        value = policy.threshold
        if isinstance(value, list):
            value = float(np.mean(value)) if value else float("nan")
        self.threshold.set(float("nan") if value is None else float(value))
        self.target.set(0.0 if target is None else float(target))

    def recent_speedups(self) -> tuple[float | None, float | None]:
        """(compute speed-up, exit speed-up) over the recent window, None before any input."""
        with self._lock:
            if not self._recent:
                return None, None
            run = sum(r for r, _ in self._recent)
            cost = sum(c for _, c in self._recent)
            n = len(self._recent)
        return self._depth * n / run, self._depth * n / cost

    def render(self) -> bytes:
        return generate_latest(self.registry)
