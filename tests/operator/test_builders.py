"""Job and ConfigMap manifests from the pure builders: no cluster needed."""

from __future__ import annotations

import json
import re

import pytest
from kubernetes.client import ApiClient, V1ConfigMap, V1Job

from therapy_rlhf.contracts.spec import parse_run

from therapy_rlhf.operator import builders
from therapy_rlhf.operator.config import OperatorConfig
from tests.support.manifests import run_manifest

OWNER = {"metadata": {"name": "demo", "uid": "0f6b1c3e-1111-2222-3333-444455556666"}}


def manifest(**resources):
    return run_manifest({
                "model": {"source": "tiny:mistral"},
                "storage": {
                    "bucket": "rlhf-bucket",
                    "prefix": "runs",
                    "endpoint": "http://minio.storage:9000",
                    "region": "eu-west-1",
                    "credentialsSecret": {"name": "s3-creds", "accessKeyIdKey": "id", "secretAccessKeyKey": "secret"},
                },
                "resources": resources,
            }, "demo", "team-a")


def validate_schema(obj: dict) -> None:
    """Against Kubernetes' own JSON schema, strictly (an unknown field is an error)."""
    kubernetes_validate = pytest.importorskip("kubernetes_validate")
    kubernetes_validate.validate(obj, "1.30.0", strict=True)


def deserialize(obj: dict, model):
    """Through the kubernetes client's own models: a field it does not know is a typo."""
    client = ApiClient()

    class Resp:
        data = json.dumps(obj)

    return client.deserialize(Resp(), model)


def env_of(job: dict) -> dict:
    return {e["name"]: e.get("value", e.get("valueFrom")) for e in job["spec"]["template"]["spec"]["containers"][0]["env"]}


def test_job_command_identity_and_labels():
    job = builders.build_job(manifest(gpus=1), "ppo", 3, 2, OWNER)
    assert job["metadata"]["name"] == "demo-ppo-r3-a2"
    assert job["metadata"]["namespace"] == "team-a"
    labels = job["metadata"]["labels"]
    assert labels == {
        "app.kubernetes.io/managed-by": "therapy-rlhf-operator",
        "rlhf.therapy.dev/run": "demo",
        "rlhf.therapy.dev/job-kind": "ppo",
        "rlhf.therapy.dev/round": "3",
        "rlhf.therapy.dev/attempt": "2",
    }
    assert job["spec"]["template"]["metadata"]["labels"] == labels
    container = job["spec"]["template"]["spec"]["containers"][0]
    assert container["command"] == [
        "python", "-m", "therapy_rlhf.jobs", "ppo", "--run-config", "/etc/therapy-rlhf/run.json",
        "--round", "3", "--store", "s3://rlhf-bucket/runs", "--outputs-file", "/dev/termination-log",
    ]
    # The outputs' digests come back in the termination message.
    assert container["terminationMessagePath"] == "/dev/termination-log"
    assert container["image"] == "ghcr.io/therapy-rlhf/jobs:0.1.0"
    ref = job["metadata"]["ownerReferences"][0]
    assert ref == {"apiVersion": "rlhf.therapy.dev/v1alpha1", "kind": "TherapyRLHFRun", "name": "demo",
                   "uid": OWNER["metadata"]["uid"], "controller": True, "blockOwnerDeletion": True}
    assert isinstance(deserialize(job, "V1Job"), V1Job)
    validate_schema(job)


@pytest.mark.parametrize(
    "kind, launcher", [("sft", True), ("ppo", True), ("ppo-generate", True), ("generate", False), ("evaluate", False)]
)
def test_several_gpus_run_training_under_accelerate_and_inference_on_one(kind, launcher):
    job = builders.build_job(manifest(gpus=4, gpuResourceName="amd.com/gpu"), kind, 0 if kind in ("sft", "evaluate") else 1, 1, OWNER)
    container = job["spec"]["template"]["spec"]["containers"][0]
    command = container["command"]
    if launcher:
        assert command[:13] == ["accelerate", "launch", "--multi_gpu", "--num_machines", "1", "--num_processes", "4",
                                "--mixed_precision", "no", "--dynamo_backend", "no", "--module", "therapy_rlhf.jobs"]
    else:
        assert command[:3] == ["python", "-m", "therapy_rlhf.jobs"]
    # Inference is one process on one GPU: it holds no GPU it would leave idle.
    gpus = "4" if launcher else "1"
    assert container["resources"]["limits"]["amd.com/gpu"] == gpus
    assert container["resources"]["requests"]["amd.com/gpu"] == gpus


def test_no_gpu_request_when_gpus_is_zero():
    container = builders.build_job(manifest(gpus=0), "generate", 1, 1, OWNER)["spec"]["template"]["spec"]["containers"][0]
    assert "nvidia.com/gpu" not in container["resources"]["requests"]
    assert "nvidia.com/gpu" not in container["resources"]["limits"]


def test_store_settings_and_credentials_come_from_the_secret():
    env = env_of(builders.build_job(manifest(), "generate", 1, 1, OWNER))
    assert env["AWS_ENDPOINT_URL"] == "http://minio.storage:9000"
    assert env["AWS_DEFAULT_REGION"] == "eu-west-1"
    assert env["AWS_ACCESS_KEY_ID"] == {"secretKeyRef": {"name": "s3-creds", "key": "id"}}
    assert env["AWS_SECRET_ACCESS_KEY"] == {"secretKeyRef": {"name": "s3-creds", "key": "secret"}}
    assert env["THERAPY_RLHF_CACHE"] == "/var/cache/therapy-rlhf"
    extra = env_of(builders.build_job(manifest(), "generate", 1, 1, OWNER, OperatorConfig(job_env={"HF_HUB_OFFLINE": "1"})))
    assert extra["HF_HUB_OFFLINE"] == "1"


def test_scheduling_and_limits_pass_through():
    job = builders.build_job(
        manifest(
            gpus=2, cpu="8", memory="64Gi", nodeSelector={"gpu": "a100"},
            tolerations=[{"key": "nvidia.com/gpu", "operator": "Exists", "effect": "NoSchedule"}],
            priorityClassName="training", queueName="gpu-queue", activeDeadlineSeconds=7200,
            cacheSize="200Gi", serviceAccountName="trainer", imagePullPolicy="Always",
        ),
        "sft", 0, 1, OWNER, OperatorConfig(job_ttl_seconds=600),
    )
    pod = job["spec"]["template"]["spec"]
    assert pod["nodeSelector"] == {"gpu": "a100"}
    assert pod["tolerations"] == [{"key": "nvidia.com/gpu", "operator": "Exists", "effect": "NoSchedule"}]
    assert pod["priorityClassName"] == "training"
    assert pod["serviceAccountName"] == "trainer"
    assert job["metadata"]["labels"]["kueue.x-k8s.io/queue-name"] == "gpu-queue"
    assert "kueue.x-k8s.io/queue-name" not in job["spec"]["template"]["metadata"]["labels"]
    assert job["spec"]["activeDeadlineSeconds"] == 7200
    assert job["spec"]["ttlSecondsAfterFinished"] == 600
    assert job["spec"]["backoffLimit"] == 0  # retries are new attempts, counted by the planner
    container = pod["containers"][0]
    assert container["resources"]["requests"] == {"cpu": "8", "memory": "64Gi", "nvidia.com/gpu": "2"}
    assert container["imagePullPolicy"] == "Always"
    cache = next(v for v in pod["volumes"] if v["name"] == "cache")
    assert cache["emptyDir"]["sizeLimit"] == "200Gi"
    assert isinstance(deserialize(job, "V1Job"), V1Job)
    validate_schema(job)


def test_a_cache_claim_keeps_model_files_across_jobs():
    job = builders.build_job(manifest(cacheClaim="model-cache"), "generate", 1, 1, OWNER)
    pod = job["spec"]["template"]["spec"]
    cache = next(v for v in pod["volumes"] if v["name"] == "cache")
    assert cache == {"name": "cache", "persistentVolumeClaim": {"claimName": "model-cache"}}
    assert {"name": "cache", "mountPath": "/var/cache/therapy-rlhf"} in pod["containers"][0]["volumeMounts"]
    validate_schema(job)


def test_no_queue_label_deadline_or_selector_unless_asked():
    job = builders.build_job(manifest(), "sft", 0, 1, OWNER)
    pod = job["spec"]["template"]["spec"]
    assert "kueue.x-k8s.io/queue-name" not in job["metadata"]["labels"]
    assert "activeDeadlineSeconds" not in job["spec"]
    assert not {"nodeSelector", "tolerations", "priorityClassName", "serviceAccountName"} & set(pod)


def test_jobs_are_locked_down():
    pod = builders.build_job(manifest(), "ppo", 1, 1, OWNER)["spec"]["template"]["spec"]
    assert pod["automountServiceAccountToken"] is False
    assert pod["restartPolicy"] == "Never"
    assert pod["securityContext"]["runAsNonRoot"] is True and pod["securityContext"]["runAsUser"] != 0
    sc = pod["containers"][0]["securityContext"]
    assert sc["allowPrivilegeEscalation"] is False and sc["readOnlyRootFilesystem"] is True
    assert sc["capabilities"] == {"drop": ["ALL"]}
    mounts = {m["mountPath"]: m for m in pod["containers"][0]["volumeMounts"]}
    # Read-only root: every path a job writes is a volume.
    assert set(mounts) == {"/etc/therapy-rlhf", "/var/cache/therapy-rlhf", "/tmp", "/dev/shm"}
    assert mounts["/etc/therapy-rlhf"]["readOnly"] is True


def test_configmap_holds_the_frozen_manifest():
    m = manifest()
    cm = builders.build_configmap(m, OWNER)
    assert cm["metadata"]["name"] == "demo-run-config"
    doc = json.loads(cm["data"]["run.json"])
    assert doc["metadata"] == {"name": "demo", "namespace": "team-a"}
    assert parse_run(doc).spec == m.spec
    assert isinstance(deserialize(cm, "V1ConfigMap"), V1ConfigMap)
    validate_schema(cm)
    volume = builders.build_job(m, "sft", 0, 1, OWNER)["spec"]["template"]["spec"]["volumes"][0]
    assert volume["configMap"]["name"] == cm["metadata"]["name"]


def test_names_are_deterministic_and_fit_kubernetes_limits():
    from therapy_rlhf.planning.planner import PPO_GENERATE
    from therapy_rlhf.contracts.jobkinds import JOB_KINDS
    from therapy_rlhf.contracts.spec import PpoSpec, RunSpec

    longest = "r" * 40
    assert builders.job_name("demo", "sft", 0, 1) == builders.job_name("demo", "sft", 0, 1)
    assert len(builders.configmap_name(longest)) <= 63
    # Every kind at the largest round and attempt the spec allows (a ppo-generate Job's round
    # is one below the last) stays a valid 63-character label.
    max_rounds = next(m.le for m in PpoSpec.model_fields["rounds"].metadata if hasattr(m, "le"))
    max_attempt = next(m.le for m in RunSpec.model_fields["backoff_limit"].metadata if hasattr(m, "le")) + 1
    for kind in JOB_KINDS:
        last = max_rounds - 1 if kind == PPO_GENERATE else max_rounds
        name = builders.job_name(longest, kind, last, max_attempt)
        assert len(name) <= 63 and re.fullmatch(r"[a-z0-9]([-a-z0-9]*[a-z0-9])?", name), name


def test_owner_without_uid_is_refused():
    with pytest.raises(ValueError, match="no metadata.uid"):
        builders.build_job(manifest(), "sft", 0, 1, {"metadata": {"name": "demo"}})


def test_installation_defaults_fill_only_what_the_run_leaves_out():
    config = OperatorConfig(default_image="registry.local/jobs:1", default_s3_endpoint="http://minio:9000",
                            default_s3_region="us-east-1", default_credentials_secret="rlhf-s3")
    spec = {"model": {"source": "tiny:mistral"}, "storage": {"bucket": "b", "region": "eu-west-1"}}
    out = config.apply_defaults(spec)
    assert out["resources"]["image"] == "registry.local/jobs:1"
    assert out["storage"] == {"bucket": "b", "region": "eu-west-1", "endpoint": "http://minio:9000",
                              "credentialsSecret": {"name": "rlhf-s3"}}
    assert spec == {"model": {"source": "tiny:mistral"}, "storage": {"bucket": "b", "region": "eu-west-1"}}
    own = config.apply_defaults({"resources": {"image": "mine:2"}, "storage": {"localPath": "/x"}})
    assert own == {"resources": {"image": "mine:2"}, "storage": {"localPath": "/x"}}


def test_config_from_env(monkeypatch):
    monkeypatch.setenv("THERAPY_RLHF_INTERVAL", "1.5")
    monkeypatch.setenv("THERAPY_RLHF_JOB_ENV", '{"HF_HUB_OFFLINE": "1", "FOO": "a=b,c: \\"d\\""}')
    monkeypatch.setenv("THERAPY_RLHF_DEFAULT_IMAGE", "img:1")
    monkeypatch.setenv("THERAPY_RLHF_ALLOWED_IMAGES", '["registry.example/jobs:*"]')
    c = OperatorConfig.from_env()
    assert c.interval == 1.5 and c.job_env == {"HF_HUB_OFFLINE": "1", "FOO": 'a=b,c: "d"'} and c.default_image == "img:1"
    assert c.allowed_images == ("registry.example/jobs:*",) and c.allowed_service_accounts == () and c.allowed_secrets == ()
    monkeypatch.setenv("THERAPY_RLHF_JOB_ENV", '{"NOT A NAME": "x"}')
    with pytest.raises(ValueError, match="not an environment variable name"):
        OperatorConfig.from_env()
    monkeypatch.setenv("THERAPY_RLHF_JOB_ENV", "{}")
    monkeypatch.setenv("THERAPY_RLHF_INTERVAL", "soon")
    with pytest.raises(ValueError, match="THERAPY_RLHF_INTERVAL must be a number"):
        OperatorConfig.from_env()


# ----------------------------------------------------------- multi-GPU pods (issue 9)


def test_dev_shm_is_a_memory_backed_volume_of_the_spec_size():
    """NCCL's shared-memory transport needs more than the runtime's 64 MiB /dev/shm."""
    for gpus, kind in ((2, "ppo"), (1, "generate")):
        job = builders.build_job(manifest(gpus=gpus, shmSize="16Gi", memory="160Gi"), kind, 1, 1, OWNER)
        pod = job["spec"]["template"]["spec"]
        assert {"name": "dshm", "emptyDir": {"medium": "Memory", "sizeLimit": "16Gi"}} in pod["volumes"]
        assert {"name": "dshm", "mountPath": "/dev/shm"} in pod["containers"][0]["volumeMounts"]
        validate_schema(job)
    default = builders.build_job(manifest(), "sft", 0, 1, OWNER)["spec"]["template"]["spec"]["volumes"]
    assert {"name": "dshm", "emptyDir": {"medium": "Memory", "sizeLimit": "8Gi"}} in default


def test_each_rank_of_a_multi_gpu_job_gets_its_own_gpu():
    """One process per GPU the pod holds, on one node: accelerate gives each its LOCAL_RANK, which the
    job pins with torch.cuda.set_device and binds NCCL to (tests/jobs/test_memory_check.py)."""
    job = builders.build_job(manifest(gpus=2), "sft", 0, 1, OWNER)
    container = job["spec"]["template"]["spec"]["containers"][0]
    command = container["command"]
    at = command.index("--num_processes")
    assert command[at + 1] == container["resources"]["limits"]["nvidia.com/gpu"] == "2"
    assert "--multi_gpu" in command and command[command.index("--num_machines") + 1] == "1"
    env = env_of(job)
    assert "CUDA_VISIBLE_DEVICES" not in env  # the device plugin decides which GPUs the pod sees
    assert "ACCELERATE_USE_FSDP" not in env  # the jobs refuse FSDP


def test_both_gpu_examples_keep_their_model_on_a_cache_claim():
    from pathlib import Path

    from therapy_rlhf.contracts.spec import load_run

    root = Path(__file__).resolve().parents[2] / "examples"
    for name in ("mistral-7b-s3.yaml", "mixtral-8x7b-qlora.yaml"):
        m = load_run(root / name)
        pod = builders.build_job(m, "generate", 1, 1, {"metadata": {"name": m.name, "uid": "u-1"}})["spec"]["template"]["spec"]
        cache = next(v for v in pod["volumes"] if v["name"] == "cache")
        assert cache == {"name": "cache", "persistentVolumeClaim": {"claimName": "therapy-rlhf-model-cache"}}, name
        assert {"name": "cache", "mountPath": "/var/cache/therapy-rlhf"} in pod["containers"][0]["volumeMounts"]
