"""The job entrypoint: bad inputs end with one 'error:' line, exit non-zero and write nothing."""

from __future__ import annotations

import json
import sys

import pytest

from therapy_rlhf.jobs.__main__ import run as job_main


def _run(capsys, kind, manifest, store, round_no=0):
    rc = job_main([kind, "--run-config", str(manifest), "--round", str(round_no), "--store", str(store)])
    captured = capsys.readouterr()
    return rc, captured.err.strip().splitlines(), captured.out


def _assert_failed_cleanly(rc, err_lines, store, needle):
    assert rc != 0
    assert len(err_lines) == 1, err_lines
    assert err_lines[0].startswith("error: ") and needle in err_lines[0], err_lines[0]
    written = [p for p in store.rglob("*") if p.is_file()] if store.exists() else []
    assert written == []


def test_corrupt_dataset(tmp_path, make_run, capsys):
    bad = tmp_path / "dialogs.json"
    bad.write_text('[{"dialog": [{"speaker": "seeker", "content": "hi"}, {"speaker": "supporter", "content": ')
    store = tmp_path / "store"
    rc, err, _ = _run(capsys, "sft", make_run({"sft": {"dataset": {"path": str(bad)}}}), store)
    _assert_failed_cleanly(rc, err, store, f"{bad}: not valid JSON")


def test_truncated_tsv_line(tmp_path, make_run, capsys):
    bad = tmp_path / "dev.tsv"
    bad.write_text("1.0 0 0 I feel low EOS 1.0 1 1 [Questions] Why?\n1.0 0 0 I feel low EOS 1.0 1\n")
    store = tmp_path / "store"
    rc, err, _ = _run(capsys, "sft", make_run({"sft": {"dataset": {"path": str(bad)}}}), store)
    _assert_failed_cleanly(rc, err, store, "line 2, turn 1")


def test_four_bit_without_bitsandbytes(tmp_path, make_run, capsys, monkeypatch):
    # with bitsandbytes installed, 4-bit runs on its CPU backend (tests/jobs/test_model_memory.py)
    monkeypatch.setitem(sys.modules, "bitsandbytes", None)
    store = tmp_path / "store"
    rc, err, _ = _run(capsys, "sft", make_run({"model": {"quantization": "4bit"}}), store)
    _assert_failed_cleanly(rc, err, store, "model.quantization=4bit needs the bitsandbytes package, which is not installed")


def test_unsupported_architecture(tmp_path, make_run, capsys):
    from transformers import GPT2Config

    model_dir = tmp_path / "gpt2"
    GPT2Config(n_layer=1, n_embd=32, n_head=2).save_pretrained(model_dir)
    store = tmp_path / "store"
    rc, err, _ = _run(capsys, "sft", make_run({"model": {"source": str(model_dir)}}), store)
    _assert_failed_cleanly(rc, err, store, "unsupported architecture 'gpt2'")


def test_checkpoint_missing_from_store(tmp_path, make_run, capsys):
    store = tmp_path / "store"
    rc, err, _ = _run(capsys, "evaluate", make_run({"evaluation": {"checkpoints": ["base", "sft", "final"]}}), store)
    _assert_failed_cleanly(rc, err, store, "checkpoint 'sft' missing from the store")
    assert "tiny-test/sft/metrics.json does not exist" in err[0]


def test_empty_prompt_file(tmp_path, make_run, capsys):
    empty = tmp_path / "prompts.jsonl"
    empty.write_text("")
    store = tmp_path / "store"
    manifest = make_run({"sft": {"enabled": False}, "evaluation": {"checkpoints": ["base"]}, "ppo": {"promptFile": str(empty)}})
    rc, err, _ = _run(capsys, "generate", manifest, store, round_no=1)
    _assert_failed_cleanly(rc, err, store, f"prompt file {empty} is empty")


def test_invalid_manifest_and_arguments(tmp_path, capsys):
    bad = tmp_path / "run.yaml"
    bad.write_text("apiVersion: rlhf.therapy.dev/v1alpha1\nkind: TherapyRLHFRun\nmetadata: {name: x}\nspec: {model: {}}\n")
    store = tmp_path / "store"
    rc, err, _ = _run(capsys, "sft", bad, store)
    _assert_failed_cleanly(rc, err, store, "invalid run config: spec.model.source: required field is missing")
    rc, err, _ = _run(capsys, "sft", bad, store, round_no=2)
    _assert_failed_cleanly(rc, err, store, "--round must be 0 for sft")
    rc, err, _ = _run(capsys, "ppo", bad, store, round_no=0)
    _assert_failed_cleanly(rc, err, store, "--round must be 1 or more for ppo")
    with pytest.raises(SystemExit) as exit_info:
        job_main(["train", "--run-config", str(bad), "--round", "0"])
    assert exit_info.value.code != 0
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("error: argument kind: invalid choice")


def test_store_override_and_progress_log(tmp_path, make_run, capsys):
    store = tmp_path / "override"
    manifest = make_run({"evaluation": {"checkpoints": ["base"], "maxExamples": 2, "maxNewTokens": 4, "metrics": ["f1"]}})
    rc, err, out = _run(capsys, "evaluate", manifest, store)
    assert rc == 0, err
    assert err == []
    results = json.loads((store / "default/tiny-test/eval/results.json").read_text())
    assert results["systems"][0]["name"] == "base" and results["examples"] == 2
    assert results["startup_seconds"] > 0 and results["work_seconds"] > 0
    assert not (tmp_path / "spec-store").exists()  # --store replaced spec.storage
    assert "[evaluate r0] start-up done in" in out


def test_job_against_s3(tmp_path, make_run, s3_store, capsys):
    """The same entrypoint on S3 (moto over HTTP): the adapter is fetched, results are written there."""
    import torch

    from therapy_rlhf.jobs import models
    from therapy_rlhf.jobs.common import JobContext
    from therapy_rlhf.contracts.layout import RunPaths
    from therapy_rlhf.contracts.spec import load_run

    manifest = make_run({"evaluation": {"checkpoints": ["base", "sft"], "maxExamples": 2, "maxNewTokens": 4, "metrics": ["f1", "rouge1"]}})
    paths = RunPaths("default", "tiny-test")
    ctx = JobContext(kind="setup", manifest=load_run(manifest), round=0, store=s3_store)
    policy, _, _ = models.load_policy(ctx, None, trainable=True)
    with torch.no_grad():
        for name, p in policy.named_parameters():
            if "lora_B" in name:
                p.normal_(0, 1.0)
    out = ctx.scratch("a")
    policy.save_pretrained(str(out))
    s3_store.put_dir(out, paths.sft_adapter())
    s3_store.write_json(paths.sft_metrics(), {"steps": 1})
    ctx.close()

    rc, err, out_text = _run(capsys, "evaluate", manifest, s3_store.uri)
    assert rc == 0 and err == [], err
    assert "fetched checkpoint 'sft' from s3://" in out_text
    results = s3_store.read_json(paths.eval_results())
    assert [s["name"] for s in results["systems"]] == ["base", "sft"]
    assert s3_store.exists(paths.eval_report()) and s3_store.exists(paths.eval_reward_curve())


def test_unexpected_exception_is_one_line_with_traceback_in_the_log(tmp_path, make_run, capsys, monkeypatch):
    import types

    from therapy_rlhf.jobs import __main__ as entry

    def broken(ctx):
        ctx.begin_work()
        return 1 / 0

    real_import = entry.importlib.import_module
    monkeypatch.setattr(
        entry.importlib,
        "import_module",
        lambda name, package=None: types.SimpleNamespace(main=broken) if name == "therapy_rlhf.jobs.sft" else real_import(name, package),
    )
    store = tmp_path / "store"
    rc, err, out = _run(capsys, "sft", make_run(), store)
    assert rc == entry.EXIT_INTERNAL
    assert err == ["error: internal: ZeroDivisionError: division by zero"]
    assert "Traceback" in out and "1 / 0" in out
    assert not store.exists()


def test_gpu_out_of_memory_is_an_expected_failure(tmp_path, make_run, capsys, monkeypatch):
    import types

    import torch

    from therapy_rlhf.jobs import __main__ as entry

    def oom(ctx):
        raise torch.OutOfMemoryError("CUDA out of memory. Tried to allocate 2.00 GiB")

    real_import = entry.importlib.import_module
    monkeypatch.setattr(
        entry.importlib,
        "import_module",
        lambda name, package=None: types.SimpleNamespace(main=oom) if name == "therapy_rlhf.jobs.ppo" else real_import(name, package),
    )
    store = tmp_path / "store"
    rc, err, _ = _run(capsys, "ppo", make_run(), store, round_no=1)
    _assert_failed_cleanly(rc, err, store, "GPU out of memory: CUDA out of memory. Tried to allocate 2.00 GiB")
    assert rc == entry.EXIT_FAILED


def test_cpu_threads_default_to_one_and_can_be_set(monkeypatch):
    import torch

    from therapy_rlhf.jobs.common import configure_cpu_threads

    before = torch.get_num_threads()
    try:
        monkeypatch.delenv("THERAPY_RLHF_CPU_THREADS", raising=False)
        monkeypatch.delenv("OMP_NUM_THREADS", raising=False)
        assert configure_cpu_threads("cpu") == 1 and torch.get_num_threads() == 1
        monkeypatch.setenv("THERAPY_RLHF_CPU_THREADS", "2")
        assert configure_cpu_threads("cpu") == 2 and torch.get_num_threads() == 2
        monkeypatch.setenv("THERAPY_RLHF_CPU_THREADS", "lots")
        assert configure_cpu_threads("cpu") == 1
        assert configure_cpu_threads("cuda:0") is None and torch.get_num_threads() == 1
    finally:
        torch.set_num_threads(before)


def test_quiet_libraries_turns_off_the_bars_of_an_already_imported_transformers():
    """transformers reads HF_HUB_DISABLE_PROGRESS_BARS once, at import: a job in a process that imported
    it earlier (a test session, the MiniLM encoder) must still keep its loading bars off stderr."""
    from transformers.utils import logging as hf_logging

    from therapy_rlhf.jobs.common import quiet_libraries

    hf_logging.enable_progress_bar()
    try:
        quiet_libraries()
        assert not hf_logging.is_progress_bar_enabled()
    finally:
        hf_logging.disable_progress_bar()
