"""awqd.metrics.BulkHistogram exports what prometheus_client's Histogram exports for the same observations, and
only what its gatherers have flushed."""

import pytest
from hypothesis import given
from hypothesis import strategies as st
from prometheus_client import CollectorRegistry, Histogram

from awqd.metrics import BulkHistogram

BOUNDS = (0.001, 0.0025, 0.01, 1, 5)
values = st.one_of(st.sampled_from(BOUNDS), st.floats(min_value=0, max_value=10, allow_nan=False))


def samples(registry: CollectorRegistry) -> dict[tuple[str, frozenset], float]:
    return {
        (sample.name, frozenset(sample.labels.items())): sample.value
        for family in registry.collect()
        for sample in family.samples
        if not sample.name.endswith("_created")
    }


@given(st.lists(st.tuples(st.sampled_from(["a", "b"]), st.lists(values, max_size=40)), max_size=6))
def test_matches_prometheus_histogram(flushes):
    bulk_registry, reference_registry = CollectorRegistry(), CollectorRegistry()
    bulk = BulkHistogram("gap_seconds", "gaps", ["model"], BOUNDS, registry=bulk_registry)
    reference = Histogram("gap_seconds", "gaps", ["model"], buckets=BOUNDS, registry=reference_registry)
    gatherers = {model: bulk.gatherer((model,)) for model in ("a", "b")}
    for model in gatherers:
        reference.labels(model)  # a series exists from its gatherer's creation, in both
    for model, observed in flushes:
        flushed = samples(bulk_registry)
        for value in observed:
            gatherers[model].observe(value)
            reference.labels(model).observe(value)
        assert samples(bulk_registry) == flushed  # nothing shows before the flush
        gatherers[model].flush()
        bulk_samples, reference_samples = samples(bulk_registry), samples(reference_registry)
        assert bulk_samples.keys() == reference_samples.keys()
        for key, expected in reference_samples.items():
            assert bulk_samples[key] == (expected if not key[0].endswith("_sum") else pytest.approx(expected))
