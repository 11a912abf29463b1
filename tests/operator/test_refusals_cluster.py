"""Refusals lift when fixed, whatever phase they caught the run in (issue 22).

A spec fixed from InvalidSpec may still be refused (a Secret that did not opt in,
one pinned to another endpoint, an image or service account the installation does
not allow, a missing Secret, no permission, an unreachable store). The run then waits
in Pending with the refusal as its reason -- never in Failed, which the operator
never looks at again -- and starts once the refusal is fixed. All cases share one
operator and one emulated cluster: each is its own run.
"""

from __future__ import annotations

import asyncio
from collections import Counter

import kmock
import pytest

from therapy_rlhf.contracts import phases
from therapy_rlhf.operator.admission import ANNOTATION_ENDPOINTS

from tests.support.budget import budget
from therapy_rlhf.operator.admission import LABEL_CREDENTIALS as OPT_IN

NAMESPACE, SECRET_NAME = "default", "s3-creds"  # the cluster fixture's (conftest.py)

pytestmark = pytest.mark.timeout(budget(40))
SECRETS = f"/api/v1/namespaces/{NAMESPACE}/secrets"
KEYS = {"AWS_ACCESS_KEY_ID": "testing", "AWS_SECRET_ACCESS_KEY": "testing"}


def _ready(run: dict) -> dict:
    return next((c for c in (run.get("status") or {}).get("conditions") or [] if c["type"] == "Ready"), {})


async def _case(cluster, name: str, spec: dict, spoil: dict, reason: str, fix) -> None:
    """Invalid spec -> Failed; fixed but refused -> Pending with ``reason``; refusal fixed -> the run starts."""
    bad = {**spec, "ppo": {**spec["ppo"], "clipRange": 7}}
    await cluster.create_run(name, bad)
    await cluster.wait_phase(name, phases.FAILED)
    await cluster.patch_run(name, {"spec": {"ppo": {"clipRange": 0.2}, **spoil}})

    async def refused():
        run = await cluster.run(name)
        return run if _ready(run).get("reason") == reason else None

    run = await cluster.wait_for(refused, what=f"{name}: Ready reason {reason}")
    assert run["status"]["phase"] == phases.PENDING, f"{name}: refused after a fix, the run is {run['status']['phase']}"
    failed = next(c for c in run["status"]["conditions"] if c["type"] == "Failed")
    assert failed["status"] == "False", f"{name}: {failed}"
    await fix()
    # Fixed: the SFT Job is created (the harness holds it pending).
    await cluster.wait_phase(name, phases.SFT)


async def test_every_refusal_after_a_spec_fix_lifts_when_fixed(cluster, run_spec, s3_endpoint):
    cluster.paused = True
    guarded = "guarded-creds"
    cluster.emulator[kmock.action.FETCH, kmock.resource("v1/secrets"), kmock.name(guarded)] << 403
    await cluster.create_secret("plain-creds", KEYS, labels={})
    await cluster.create_secret("pinned-creds", KEYS, annotations={ANNOTATION_ENDPOINTS: "https://minio.elsewhere:9000"})
    # Seven runs re-checked every tick: a 1 s timer keeps a loaded machine's operator from falling behind
    # (a spec fix is acted on at once by the update handler; a fixed Secret at the next tick).
    await cluster.start_operator(interval=1.0)

    def storage(**changes):
        return {"storage": {**run_spec()["storage"], **changes}}

    def secret(name):
        return storage(credentialsSecret={"name": name})

    async def patch_secret(name, meta):
        await cluster.api("PATCH", f"{SECRETS}/{name}", {"metadata": meta})

    async def respec(name, patch):
        await cluster.patch_run(name, {"spec": patch})

    resources = run_spec()["resources"]
    cases = [
        ("unlabelled", secret("plain-creds"), phases.R_NOT_ALLOWED,
         lambda: patch_secret("plain-creds", {"labels": {OPT_IN: "true"}})),
        ("pinned", secret("pinned-creds"), phases.R_NOT_ALLOWED,
         lambda: patch_secret("pinned-creds", {"annotations": {ANNOTATION_ENDPOINTS: s3_endpoint}})),
        ("image", {"resources": {**resources, "image": "evil/miner:latest"}}, phases.R_NOT_ALLOWED,
         lambda: respec("image", {"resources": {"image": resources["image"]}})),
        ("account", {"resources": {**resources, "serviceAccountName": "cluster-admin"}}, phases.R_NOT_ALLOWED,
         lambda: respec("account", {"resources": {"serviceAccountName": None}})),
        ("missing", secret("later-creds"), phases.R_SECRET_MISSING,
         lambda: cluster.create_secret("later-creds", KEYS)),
        ("forbidden", secret(guarded), phases.R_FORBIDDEN,
         lambda: respec("forbidden", secret(SECRET_NAME))),
        ("unreachable", storage(endpoint="http://127.0.0.1:9"), phases.R_STORE_UNAVAILABLE,
         lambda: respec("unreachable", storage(endpoint=s3_endpoint))),
    ]
    await asyncio.gather(*(_case(cluster, name, run_spec(), spoil, reason, fix) for name, spoil, reason, fix in cases))
    # One Warning per refusal, not one per tick.
    events = Counter((e["involvedObject"]["name"], e["reason"]) for e in await cluster.events() if e["type"] == "Warning")
    for name, _spoil, reason, _fix in cases:
        assert events[(name, reason)] == 1, (name, reason, events)
