"""The Helm chart, rendered with Helm's Go engine (helm-python-sdk) and checked
against Kubernetes' own JSON schemas (kubernetes-validate)."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml

ROOT = Path(__file__).resolve().parents[2]
CHART = ROOT / "charts" / "therapy-rlhf"
KUBE_VERSION = "1.30.0"

helm = pytest.importorskip("helm_python", reason="helm-python-sdk (Helm's Go engine) is not installed")
kubernetes_validate = pytest.importorskip("kubernetes_validate", reason="kubernetes-validate is not installed")


def render(values: dict | None = None) -> list[dict]:
    try:
        chart = helm.Chart.load(str(CHART))
    except helm.HelmLibraryError as err:  # pragma: no cover - platform without the shared library
        pytest.skip(f"Helm's Go engine cannot load here: {err}")
    out = chart.render(values or {}, name="rlhf", namespace="rlhf-system", is_install=True)
    docs = []
    for path, text in sorted(out.items()):
        if path.endswith("NOTES.txt"):
            continue
        docs.extend(d for d in yaml.safe_load_all(text) if d)
    return docs


def by_kind(docs: list[dict], kind: str) -> list[dict]:
    return [d for d in docs if d["kind"] == kind]


@pytest.mark.parametrize(
    "values",
    [
        {},
        {"watch": {"allNamespaces": False, "namespaces": ["team-a", "team-b"]}},
        {"crd": {"install": False}, "metrics": {"enabled": False}, "serviceAccount": {"create": False, "name": "ops"}},
        {"operator": {"jobEnv": {"HF_HUB_OFFLINE": "1"}, "verbose": True}, "jobDefaults": {"image": "j:1"}},
    ],
)
def test_every_rendered_object_validates_against_the_kubernetes_schemas(values):
    docs = render(values)
    assert docs
    for doc in docs:
        assert doc.get("apiVersion") and doc.get("kind") and doc["metadata"].get("name"), doc
        kubernetes_validate.validate(doc, KUBE_VERSION, strict=True)


def test_chart_lints_clean():
    report = helm.lint(str(CHART), strict=True)
    assert report["errors"] == []
    assert [m for m in report["messages"] if m["severity"] >= 2] == []


def test_chart_crd_is_the_generated_crd():
    generated = (ROOT / "crds" / "therapyrlhfrun.yaml").read_text()
    assert (CHART / "files" / "therapyrlhfrun.yaml").read_text() == generated
    rendered = by_kind(render(), "CustomResourceDefinition")
    assert rendered == [yaml.safe_load(generated)]
    assert by_kind(render({"crd": {"install": False}}), "CustomResourceDefinition") == []


def test_deployment_is_locked_down_and_probed():
    (deploy,) = by_kind(render(), "Deployment")
    pod = deploy["spec"]["template"]["spec"]
    (container,) = pod["containers"]
    assert pod["securityContext"]["runAsNonRoot"] is True
    assert container["securityContext"]["allowPrivilegeEscalation"] is False
    assert container["securityContext"]["readOnlyRootFilesystem"] is True
    assert container["resources"]["requests"] and container["resources"]["limits"]["memory"]
    assert container["livenessProbe"]["httpGet"]["path"] == "/healthz"
    assert "--liveness=http://0.0.0.0:8081/healthz" in container["args"]
    assert container["command"] == ["python", "-m", "therapy_rlhf.operator"]
    env = {e["name"]: e["value"] for e in container["env"]}
    assert env["THERAPY_RLHF_INTERVAL"] == "1" and env["THERAPY_RLHF_METRICS_PORT"] == "8080"
    (service,) = by_kind(render(), "Service")
    assert service["spec"]["ports"][0]["targetPort"] == "metrics"
    assert service["spec"]["selector"] == deploy["spec"]["selector"]["matchLabels"]


def test_rbac_is_namespaced_by_default_and_cluster_wide_by_value():
    default = render()
    assert by_kind(default, "ClusterRole") == [] and by_kind(default, "ClusterRoleBinding") == []
    assert [r["metadata"]["namespace"] for r in by_kind(default, "Role")] == ["rlhf-system"]
    (deploy,) = by_kind(default, "Deployment")
    args = deploy["spec"]["template"]["spec"]["containers"][0]["args"]
    assert "--namespace=rlhf-system" in args and "--all-namespaces" not in args
    ns = render({"watch": {"namespaces": ["team-a", "team-b"]}})
    assert sorted(r["metadata"]["namespace"] for r in by_kind(ns, "Role")) == ["team-a", "team-b"]
    assert sorted(r["metadata"]["namespace"] for r in by_kind(ns, "RoleBinding")) == ["team-a", "team-b"]
    cluster = render({"watch": {"allNamespaces": True}})
    assert {r["metadata"]["name"] for r in by_kind(cluster, "ClusterRole")} == {"rlhf-therapy-rlhf"}
    assert by_kind(cluster, "Role") == []
    (deploy,) = by_kind(cluster, "Deployment")
    assert "--all-namespaces" in deploy["spec"]["template"]["spec"]["containers"][0]["args"]


def test_rbac_is_least_privilege():
    (role,) = by_kind(render(), "Role")
    verbs = {(g, res): set(rule["verbs"]) for rule in role["rules"] for g in rule["apiGroups"] for res in rule["resources"]}
    assert verbs[("", "secrets")] == {"get"}  # never list or watch every Secret
    assert "delete" not in verbs[("batch", "jobs")]
    assert all("*" not in v for v in verbs.values())
    assert verbs[("", "pods")] == {"list"}  # termination messages only
    # (tests/operator/test_rbac_cluster.py compares every rule with the operator's API calls)


def test_an_allow_list_of_secrets_limits_the_rbac_to_those_names():
    (role,) = by_kind(render({"security": {"credentialsSecrets": ["team-s3"]},
                              "jobDefaults": {"credentialsSecret": "shared-s3"}}), "Role")
    (rule,) = [r for r in role["rules"] if r["resources"] == ["secrets"]]
    assert rule["resourceNames"] == ["team-s3", "shared-s3"] and rule["verbs"] == ["get"]
    (open_role,) = by_kind(render(), "Role")
    assert "resourceNames" not in [r for r in open_role["rules"] if r["resources"] == ["secrets"]][0]


@pytest.mark.parametrize("value", ['a,b=c', 'say "hi"', "line\nbreak", "x: {y}", "{{ .Values }}"])
def test_job_env_values_reach_the_operator_unchanged(value, monkeypatch):
    import json

    from therapy_rlhf.operator.config import OperatorConfig

    (deploy,) = by_kind(render({"operator": {"jobEnv": {"HF_HUB_OFFLINE": "1", "TRICKY": value}}}), "Deployment")
    env = {e["name"]: e["value"] for e in deploy["spec"]["template"]["spec"]["containers"][0]["env"]}
    assert json.loads(env["THERAPY_RLHF_JOB_ENV"]) == {"HF_HUB_OFFLINE": "1", "TRICKY": value}
    monkeypatch.setenv("THERAPY_RLHF_JOB_ENV", env["THERAPY_RLHF_JOB_ENV"])
    assert OperatorConfig.from_env().job_env["TRICKY"] == value


def test_security_values_reach_the_operator():
    from therapy_rlhf.operator.config import OperatorConfig

    (deploy,) = by_kind(render({"security": {"allowedImages": ["reg.example/jobs:*"],
                                             "allowedServiceAccounts": ["trainer"]}}), "Deployment")
    env = {e["name"]: e["value"] for e in deploy["spec"]["template"]["spec"]["containers"][0]["env"]}
    import os

    saved = dict(os.environ)
    try:
        os.environ.update({k: v for k, v in env.items() if k.startswith("THERAPY_RLHF_")})
        config = OperatorConfig.from_env()
    finally:
        os.environ.clear()
        os.environ.update(saved)
    assert config.allowed_images == ("reg.example/jobs:*",) and config.allowed_service_accounts == ("trainer",)


def test_every_value_is_commented():
    """Each key has a comment right above it, or sits in a block whose key has one."""
    lines = (CHART / "values.yaml").read_text().splitlines()
    commented: dict[int, bool] = {}  # indentation -> is the open block at that depth commented
    for i, line in enumerate(lines):
        stripped = line.strip()
        if not stripped or stripped.startswith("#") or stripped.startswith("-") or ":" not in stripped:
            continue
        indent = len(line) - len(line.lstrip())
        commented = {d: c for d, c in commented.items() if d < indent}
        own = i > 0 and lines[i - 1].strip().startswith("#")
        inherited = any(commented.values())
        assert own or inherited, f"values.yaml line {i + 1} has no comment: {line!r}"
        commented[indent] = own or inherited
