"""``GET /metrics``: the appliance in the Prometheus text format, for fleets to scrape.

Counters and histograms move with every answer of every source (the
dispatcher's answer listeners call :meth:`Metrics.observe`); gauges are read
from :class:`~appliance.service.status.Status` at scrape time. With a price in
``power`` (``price_per_kwh``, ``device_cost``), ``appliance_cost_per_1000_answers``
is what 1,000 answers cost at the recent answers' mean
(:mod:`appliance.console.cost`, the same figure the console shows). The
registry is our own, so nothing else in the process adds to it.
"""

from __future__ import annotations

from collections.abc import Iterator

from prometheus_client import CollectorRegistry, Counter, Histogram, generate_latest
from prometheus_client.core import GaugeMetricFamily, Metric
from prometheus_client.exposition import CONTENT_TYPE_PLAIN_0_0_4
from prometheus_client.registry import Collector

import appliance
from appliance.config.schema import PowerSettings, ThermalLevel
from appliance.console.cost import CostMeter, priced
from appliance.protocol.answer import Answer
from appliance.protocol.messages import Request
from appliance.service.status import Status

CONTENT_TYPE = CONTENT_TYPE_PLAIN_0_0_4
TOKENS_PER_S_BUCKETS = (1, 2, 3, 4, 5, 6, 8, 10, 15, 20, 30, 50, 75, 100, 150, 200, 300)
TTFT_BUCKETS = (0.05, 0.1, 0.25, 0.5, 0.75, 1, 1.5, 2, 3, 5, 8, 13, 20, 30, 60)


class Metrics:
    """The appliance's metrics; :meth:`observe` is a dispatcher answer listener.

    ``power``: the prices answers are counted at (``None``, or no price in it: no cost).
    """

    def __init__(self, status: Status, levels: tuple[ThermalLevel, ...],
                 power: PowerSettings | None = None) -> None:
        self.registry = CollectorRegistry()
        self.cost = CostMeter(power) if power is not None and priced(power) else None
        by = ["source", "tier"]
        self.answers = Counter("appliance_answers", "Answers given",
                               [*by, "finish_reason"], registry=self.registry)
        self.tokens = Counter("appliance_generated_tokens", "Tokens generated in answers", by,
                              registry=self.registry)
        self.tokens_per_s = Histogram("appliance_tokens_per_second",
                                      "Generation speed of each answer", by,
                                      buckets=TOKENS_PER_S_BUCKETS, registry=self.registry)
        self.ttft = Histogram("appliance_time_to_first_token_seconds",
                              "From the start of a generation to its first token", by,
                              buckets=TTFT_BUCKETS, registry=self.registry)
        self.energy = Counter("appliance_answer_energy_joules",
                              "Energy spent on answers, where a power meter exists", by,
                              registry=self.registry)
        self.thinking_tokens = Counter("appliance_thinking_tokens",
                                       "Tokens a thinking model thought before answering", by,
                                       registry=self.registry)
        self.thinking_seconds = Counter("appliance_thinking_seconds",
                                        "Time a thinking model spent thinking", by,
                                        registry=self.registry)
        self.requests = Counter("appliance_api_requests", "HTTP API requests by route and status",
                                ["api", "code"], registry=self.registry)
        self.registry.register(_StatusCollector(status, levels, self.cost))

    def observe(self, request: Request, answer: Answer) -> None:
        """Count one answer (of any source)."""
        labels = (request.source, answer.tier or "none")
        self.answers.labels(*labels, answer.finish_reason).inc()
        if self.cost is not None:
            self.cost.observe(answer)
        done = answer.completion
        if done is not None and done.thinking_tokens:
            self.thinking_tokens.labels(*labels).inc(done.thinking_tokens)
            self.thinking_seconds.labels(*labels).inc(round(done.thinking_ms / 1000, 3))
        tokens = answer.tokens
        if tokens <= 0:
            return
        self.tokens.labels(*labels).inc(tokens)
        if done is not None:
            self.ttft.labels(*labels).observe(round(done.ttft_ms, 1) / 1000)
            if tokens > 1:
                self.tokens_per_s.labels(*labels).observe(round(done.tokens_per_s, 2))
        if answer.energy is not None and answer.energy.joules >= 0:
            self.energy.labels(*labels).inc(round(answer.energy.joules, 3))

    def render(self) -> bytes:
        """The text exposition of everything."""
        return generate_latest(self.registry)


class _StatusCollector(Collector):
    """Gauges read from the status at each scrape."""

    def __init__(self, status: Status, levels: tuple[ThermalLevel, ...],
                 cost: CostMeter | None) -> None:
        self.status = status
        self.levels = [level.name for level in levels]
        self.cost = cost

    def collect(self) -> Iterator[Metric]:
        s = self.status
        yield _gauge("appliance_queue_depth", "Requests waiting", s.queue_depth)
        yield _gauge("appliance_ready", "1 once the model is loaded", int(s.ready))
        if s.temp_c is not None:
            yield _gauge("appliance_soc_temperature_celsius", "SoC temperature", s.temp_c)
        index = self.levels.index(s.throttle_level) if s.throttle_level in self.levels else -1
        yield _gauge("appliance_throttle_level", "Thermal level, 0 for the coolest "
                     f"({', '.join(self.levels)})", index)
        if s.power_w is not None:
            yield _gauge("appliance_power_watts", "Board power", s.power_w)
        if s.n_threads:
            threads = GaugeMetricFamily(
                "appliance_decode_threads", "Decode threads in use, and why: configured, heat, "
                "contention (fewer while the CPU is busy) or probe", labels=["reason"])
            threads.add_metric([s.threads_reason], s.n_threads)
            yield threads
        state = GaugeMetricFamily("appliance_state", "The published state (1 for the current)",
                                  labels=["state"])
        state.add_metric([s.state], 1)
        yield state
        cost = self.cost.cost() if self.cost is not None else None
        if cost is not None and cost.per_1000 is not None:
            family = GaugeMetricFamily(
                "appliance_cost_per_1000_answers", "What 1,000 answers cost at the recent "
                "answers' mean: electricity and the device's price over its life",
                labels=["currency"])
            family.add_metric([cost.currency], cost.per_1000)
            yield family
        info = GaugeMetricFamily("appliance_build_info", "Version and model", labels=[
            "version", "model"])
        info.add_metric([appliance.__version__, s.model], 1)
        yield info


def _gauge(name: str, documentation: str, value: float) -> GaugeMetricFamily:
    return GaugeMetricFamily(name, documentation, value=value)
