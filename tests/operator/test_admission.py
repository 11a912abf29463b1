"""What a run's author may ask for: images, service accounts, credentials Secrets.

Unit checks of admission.py, then the real operator in the emulated cluster: a
refused run is blocked (Ready=False, reason NotAllowed, one Warning Event) and
nothing is created -- no Job, no ConfigMap, nothing in the store -- until it is fixed."""

from __future__ import annotations

import pytest

from therapy_rlhf.contracts import phases

from therapy_rlhf.operator.admission import LABEL_CREDENTIALS, NotAllowed, check_run, check_secret
from therapy_rlhf.operator.config import OperatorConfig

from tests.support.budget import budget
from tests.support.manifests import run_manifest

pytestmark = pytest.mark.timeout(budget(15))


def manifest(**resources):
    spec = {"model": {"source": "tiny:mistral"},
            "storage": {"bucket": "rlhf-bucket", "endpoint": "https://minio.example:9000", "credentialsSecret": {"name": "s3"}},
            "resources": resources}
    return run_manifest(spec, "demo")


def test_only_the_installations_image_by_default():
    check_run(manifest(), OperatorConfig())  # the spec's default image
    check_run(manifest(image="reg.example/jobs:2"), OperatorConfig(default_image="reg.example/jobs:2"))
    with pytest.raises(NotAllowed, match="spec.resources.image 'evil/miner:1' is not allowed"):
        check_run(manifest(image="evil/miner:1"), OperatorConfig())
    check_run(manifest(image="reg.example/jobs:3"), OperatorConfig(allowed_images=("reg.example/jobs:*",)))
    check_run(manifest(image="anything:1"), OperatorConfig(allowed_images=("*",)))


def test_no_service_account_unless_allowed():
    with pytest.raises(NotAllowed, match="serviceAccountName 'cluster-admin' is not allowed .*allowed: none"):
        check_run(manifest(serviceAccountName="cluster-admin"), OperatorConfig())
    check_run(manifest(serviceAccountName="trainer"), OperatorConfig(allowed_service_accounts=("trainer",)))


def test_a_secret_must_opt_in_by_label_or_allow_list():
    m = manifest()
    with pytest.raises(NotAllowed, match="has not opted in"):
        check_secret(m, OperatorConfig(), {"labels": {}})
    check_secret(m, OperatorConfig(), {"labels": {LABEL_CREDENTIALS: "true"}})
    check_secret(m, OperatorConfig(default_credentials_secret="s3"), {})  # the installation's own
    with pytest.raises(NotAllowed, match="not in this installation's security.credentialsSecrets"):
        check_secret(m, OperatorConfig(allowed_secrets=("team",)), {"labels": {LABEL_CREDENTIALS: "true"}})
    check_secret(m, OperatorConfig(allowed_secrets=("s3",)), {})


def test_a_secret_may_pin_where_its_keys_go():
    pinned = {"labels": {LABEL_CREDENTIALS: "true"}, "annotations": {"rlhf.therapy.dev/s3-endpoints": "https://minio.example:9000/"}}
    check_secret(manifest(), OperatorConfig(), pinned)
    other = manifest()
    other.spec.storage.endpoint = "https://attacker.example"
    with pytest.raises(NotAllowed, match="may only be sent to https://minio.example:9000 .*, not to 'https://attacker.example'"):
        check_secret(other, OperatorConfig(), pinned)


async def blocked_with_nothing_created(cluster, run_store, needle: str):
    run = await cluster.wait_reason("demo", phases.R_NOT_ALLOWED)
    ready = next(c for c in run["status"]["conditions"] if c["type"] == "Ready")
    assert ready["status"] == "False" and needle in ready["message"]
    await cluster.settle()
    assert await cluster.jobs() == [] and await cluster.list("/api/v1/namespaces/default/configmaps") == []
    assert run_store.list("") == []  # nothing frozen, nothing written
    events = [e for e in await cluster.events() if e["reason"] == phases.R_NOT_ALLOWED]
    assert len(events) == 1 and events[0]["type"] == "Warning"


async def test_a_secret_that_did_not_opt_in_is_never_used(cluster, run_spec, run_store):
    await cluster.create_secret("someone-elses", {"AWS_ACCESS_KEY_ID": "k", "AWS_SECRET_ACCESS_KEY": "s"}, labels={})
    spec = run_spec()
    spec["storage"]["credentialsSecret"] = {"name": "someone-elses"}
    await cluster.start_operator()
    await cluster.create_run("demo", spec)
    await blocked_with_nothing_created(cluster, run_store, "Secret default/someone-elses")


@pytest.mark.parametrize(
    "resources, needle",
    [({"image": "evil/miner:1"}, "spec.resources.image 'evil/miner:1'"),
     ({"serviceAccountName": "cluster-admin"}, "serviceAccountName 'cluster-admin'")],
    ids=["image", "service-account"],
)
async def test_a_disallowed_image_or_service_account_creates_nothing(cluster, run_spec, run_store, resources, needle):
    spec = run_spec()
    spec["resources"].update(resources)
    await cluster.start_operator()
    await cluster.create_run("demo", spec)
    await blocked_with_nothing_created(cluster, run_store, needle)
    # Fixing the spec starts the run.
    fixed = {k: None for k in resources} if "serviceAccountName" in resources else {"image": "therapy-rlhf/jobs-cpu:dev"}
    await cluster.patch_run("demo", {"spec": {"resources": fixed}})
    await cluster.wait_phase("demo", phases.SFT)
