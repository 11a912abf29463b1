"""feedback.selection.budget defaults to a quarter of the batch (issue 21's benchmarks: bench/RESULTS.md)."""

from __future__ import annotations

import pytest


def _selection(**sel):
    from tests.support.manifests import run_manifest

    return run_manifest({"model": {"source": "tiny:mistral"}, "storage": {"localPath": "/x"},
                         "feedback": {"selection": sel}}).spec.feedback.selection


@pytest.mark.parametrize("batch,count", [(64, 16), (32, 8), (10, 3), (2, 1)])
def test_the_default_budget_is_a_quarter_of_the_batch(batch, count):
    from therapy_rlhf.contracts.spec import responses_of

    spec = _selection(mode="uniform")
    assert spec.budget == "25%"
    assert responses_of(spec.budget, batch) == count


def test_the_default_mode_stays_all():
    assert _selection().mode == "all"
