"""Samples read back from a Prometheus scrape, by name and labels."""

from __future__ import annotations

from prometheus_client.parser import text_string_to_metric_families


def samples(text: str) -> dict[tuple[str, frozenset[tuple[str, str]]], float]:
    """Every sample of an exposition, by name and labels."""
    return {
        (sample.name, frozenset(sample.labels.items())): sample.value
        for family in text_string_to_metric_families(text)
        for sample in family.samples
    }


def value(text: str, name: str, **labels: str) -> float:
    return samples(text)[(name, frozenset(labels.items()))]


def webhook_counts(text: str, endpoint: str) -> dict[str, float]:
    """sitegpt_bridge_webhooks_total of one endpoint, by outcome."""
    return {labels["outcome"]: count for (name, label_set), count in samples(text).items()
            if name == "sitegpt_bridge_webhooks_total"
            for labels in [dict(label_set)] if labels["endpoint"] == endpoint}
