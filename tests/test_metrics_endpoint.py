"""GET /metrics after known traffic through a real gateway, with one worker and with two."""

from __future__ import annotations

import httpx
import openai
import pytest
from prometheus_client.parser import text_string_to_metric_families

from tests.conftest import scripted_graph

USER = [{"role": "user", "content": "count me"}]


def scrape(url: str) -> dict[tuple[str, tuple], float]:
    samples = {}
    for family in text_string_to_metric_families(httpx.get(f"{url}/metrics").text):
        for s in family.samples:
            samples[(s.name, tuple(sorted(s.labels.items())))] = s.value
    return samples


def value(samples, name: str, **labels) -> float:
    return samples.get((name, tuple(sorted(labels.items()))), 0.0)


@pytest.mark.parametrize("workers", [1, 2])
def test_metrics_count_known_traffic(upstream, gateway_factory, workers):
    gw = gateway_factory(scripted_graph(upstream), workers=workers)
    client = gw.client()
    for _ in range(5):
        client.chat.completions.create(model="plain", messages=USER)
    for _ in range(3):
        list(client.chat.completions.create(model="plain", messages=USER, stream=True,
                                            stream_options={"include_usage": True}))
    for _ in range(2):
        with pytest.raises(openai.RateLimitError):
            client.chat.completions.create(model="ratelimit", messages=USER)
    with pytest.raises(openai.NotFoundError):
        client.chat.completions.create(model="nope", messages=USER)

    # Several scrapes: with two workers each may be answered by either; all must see every worker's counts.
    for _ in range(4):
        m = scrape(gw.url)
        assert value(m, "octogate_requests_total", model="plain", node="plain", status="200", key="") == 8
        assert value(m, "octogate_requests_total", model="ratelimit", node="ratelimit", status="429", key="") == 2
        assert value(m, "octogate_requests_total", model="nope", node="", status="404", key="") == 1
        assert value(m, "octogate_request_duration_seconds_count", model="plain", node="plain") == 8
        assert value(m, "octogate_upstream_duration_seconds_count", node="plain", backend="nodes.plain.backend",
                     outcome="ok") == 8
        assert value(m, "octogate_upstream_duration_seconds_count", node="ratelimit",
                     backend="nodes.ratelimit.backend", outcome="error") == 2
        assert value(m, "octogate_time_to_first_token_seconds_count", node="plain") == 3
        # The scripted upstream reports 5 prompt tokens per request; 3 words per streamed answer.
        assert value(m, "octogate_tokens_total", node="plain", direction="prompt", key="") == 8 * 5
        assert value(m, "octogate_tokens_total", node="plain", direction="completion", key="") == 5 * 3 + 3 * 3
        assert value(m, "octogate_requests_in_flight") == 0
