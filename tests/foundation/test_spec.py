"""The run spec: paper defaults, one-line field-path errors, and `therapy-rlhf validate` exit codes."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from therapy_rlhf.contracts.spec import PAPER_PROMPT, RunSpec, SpecError, load_run, parse_run, parse_spec
from tests.support.manifests import run_doc

ROOT = Path(__file__).resolve().parents[2]
EXAMPLES = sorted((ROOT / "examples").glob("*.yaml"))
INVALID = sorted((ROOT / "examples" / "invalid").glob("*.yaml"))
MINIMAL = {"model": {"source": "tiny:mistral"}, "storage": {"localPath": "/tmp/store"}}


def manifest(spec: dict, name: str = "demo") -> dict:
    return run_doc(spec, name)


def test_defaults_reproduce_the_paper():
    s = RunSpec.model_validate(MINIMAL)
    assert s.ppo.learning_rate == 1.4e-5
    assert s.ppo.clip_range == 0.2
    assert s.ppo.rounds == 50
    assert [p.text for p in s.ppo.prompts] == [PAPER_PROMPT] == ["I'm feeling depressed and hopeless. Can you help me?"]
    assert [c.name for c in s.feedback.rubric] == ["empathy", "boundaries", "safe-language", "guidance", "overall"]
    assert "medical" in s.feedback.rubric[3].description
    assert s.feedback.reward_rule == "weighted-mean" and s.feedback.min_raters == 1
    assert s.feedback.on_deadline == "Hold" and s.feedback.gate_deadline_seconds is None  # never auto-approve
    # continuous 0..1 rewards: levels map evenly onto 0..1, not binary
    assert s.feedback.scale_levels == 5
    # LoRA, SFT baseline and evaluation on; TRL-0.11-style KL controller; GAE(1, 0.95)
    assert (s.model.lora.r, s.model.lora.alpha, s.model.quantization) == (16, 32, "none")
    assert s.sft.enabled and s.evaluation.enabled
    assert (s.ppo.kl.init_coef, s.ppo.kl.adaptive, s.ppo.kl.target, s.ppo.kl.horizon) == (0.2, True, 6.0, 10000)
    assert (s.ppo.gamma, s.ppo.lam) == (1.0, 0.95)
    assert s.suspend is False and s.backoff_limit == 2


@pytest.mark.parametrize("path", EXAMPLES, ids=lambda p: p.name)
def test_examples_load(path):
    m = load_run(path)
    assert m.spec.ppo.rounds >= 1


def test_cluster_examples_say_what_they_claim():
    mistral = load_run(ROOT / "examples" / "mistral-7b-s3.yaml").spec
    assert mistral.storage.bucket and mistral.storage.credentials_secret.name == "therapy-rlhf-s3"
    assert (mistral.resources.gpus, mistral.ppo.rounds, mistral.ppo.learning_rate, mistral.ppo.clip_range) == (1, 50, 1.4e-5, 0.2)
    mixtral = load_run(ROOT / "examples" / "mixtral-8x7b-qlora.yaml").spec
    assert mixtral.model.quantization == "4bit" and mixtral.resources.gpus >= 2
    assert mixtral.feedback.min_raters == 2 and len(mixtral.feedback.allowed_raters) >= 2
    assert mixtral.feedback.on_deadline == "Hold" and mixtral.feedback.gate_deadline_seconds
    assert mixtral.resources.queue_name


@pytest.mark.parametrize(
    "spec,error",
    [
        ({**MINIMAL, "ppo": {"rounds": 0}}, "spec.ppo.rounds: Input should be greater than or equal to 1 (got 0)"),
        ({**MINIMAL, "ppo": {"generation": {"topP": 2}}}, "spec.ppo.generation.topP: Input should be less than or equal to 1"),
        ({**MINIMAL, "ppo": {"prompts": [{"id": "a", "text": ""}]}}, "spec.ppo.prompts[0].text: String should have at least 1 character"),
        ({**MINIMAL, "feedback": {"rubric": [{"name": "x"}, {"name": "x"}]}}, "spec.feedback.rubric: duplicate rubric criteria ['x']"),
        ({**MINIMAL, "resources": {"memory": "lots"}}, "spec.resources.memory: String should match pattern"),
        ({**MINIMAL, "resources": {"cacheClaim": "My_Claim"}}, "spec.resources.cacheClaim: String should match pattern"),
        ({**MINIMAL, "storage": {"bucket": "Bad_Bucket"}}, "spec.storage.bucket: String should match pattern"),
        ({**MINIMAL, "storage": {"localPath": "/x", "prefix": "a/../b"}}, "spec.storage.prefix: prefix must be"),
        ({**MINIMAL, "evaluation": {"checkpoints": ["round-99"]}, "ppo": {"rounds": 3}}, "round-99 is outside 1..3"),
        ({**MINIMAL, "suspend": "maybe"}, "spec.suspend: Input should be a valid boolean"),
        ({**MINIMAL, "model": {}}, "spec.model.source: required field is missing"),
    ],
)
def test_bad_values_name_their_field(spec, error):
    with pytest.raises(SpecError) as err:
        parse_run(manifest(spec), "run.yaml")
    text = str(err.value)
    assert error in text and text.startswith("run.yaml: ")
    assert len(text.splitlines()) == 1


def test_every_problem_gets_its_own_line():
    with pytest.raises(SpecError) as err:
        parse_run(manifest({**MINIMAL, "ppo": {"rounds": -1, "clipRange": 5}, "extra": 1}), "r.yaml")
    lines = str(err.value).splitlines()
    assert len(lines) == 3 and len(err.value.problems) == 3
    assert any("spec.extra: unknown field" in line for line in lines)


def test_parse_spec_prefixes_paths_and_rejects_non_mappings():
    with pytest.raises(SpecError, match=r"spec\.ppo\.rounds"):
        parse_spec({**MINIMAL, "ppo": {"rounds": "x"}})
    with pytest.raises(SpecError, match="spec: expected a mapping, got list"):
        parse_spec([1, 2])
    with pytest.raises(SpecError, match=r"\(document\): expected a mapping, got str"):
        parse_run("hello")


def test_load_run_file_problems(tmp_path):
    with pytest.raises(SpecError, match="cannot read file"):
        load_run(tmp_path / "missing.yaml")
    two = tmp_path / "two.yaml"
    two.write_text("a: 1\n---\nb: 2\n")
    with pytest.raises(SpecError, match="expected exactly one YAML document, found 2"):
        load_run(two)
    empty = tmp_path / "empty.yaml"
    empty.write_text("")
    with pytest.raises(SpecError, match="found 0"):
        load_run(empty)


def test_wrong_api_version_and_kind():
    doc = manifest(MINIMAL)
    with pytest.raises(SpecError, match="apiVersion"):
        parse_run({**doc, "apiVersion": "v1"})
    with pytest.raises(SpecError, match="kind"):
        parse_run({**doc, "kind": "Pod"})


# ---------------------------------------------------------- the validate CLI


def validate(*files):
    return subprocess.run(
        [sys.executable, "-m", "therapy_rlhf.cli", "validate", *map(str, files)], capture_output=True, text=True
    )


def test_validate_accepts_every_example():
    proc = validate(*EXAMPLES)
    assert proc.returncode == 0, proc.stderr
    # GPU runs print their memory plan, indented, under the ok line (tests/foundation/test_memory_plan.py)
    assert [l for l in proc.stdout.splitlines() if not l.startswith("  ")] == [f"{p}: ok" for p in EXAMPLES]


def test_validate_rejects_every_bad_input_with_a_field_path():
    proc = validate(*INVALID)
    assert proc.returncode == 1
    lines = proc.stderr.splitlines()
    assert len(lines) == len(INVALID)  # one line per file: one problem each
    for path, line in zip(INVALID, lines):
        expect = next(l.split(":", 1)[1].strip() for l in path.read_text().splitlines() if l.startswith("# expect:"))
        assert line.startswith(f"{path}: ") and expect in line, line
    assert proc.stdout == ""


def test_validate_mixed_files_reports_each():
    proc = validate(EXAMPLES[0], INVALID[0])
    assert proc.returncode == 1
    assert proc.stdout.splitlines()[0] == f"{EXAMPLES[0]}: ok"
    assert proc.stderr.startswith(f"{INVALID[0]}: ")


def test_validate_needs_a_file():
    proc = validate()
    assert proc.returncode == 2 and "required" in proc.stderr
