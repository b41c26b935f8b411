"""`dvc repro` of the tiny profile in a temporary git repository, end to end.

Asserts: every output exists and parses; MLflow holds one parent run and one child run per
stage-variant with the expected metrics; a second `dvc repro` does nothing; editing one
variant re-runs only its stages and the report, and the report re-attaches the records of
the stages that did not run (tagged vld.restored=true) to the new parent run; adding a variant
puts only its own stages out of date; editing code puts exactly the stages it feeds out of
date (bytecode does not); `dvc exp run -S` runs only what its override touches.
"""

from __future__ import annotations

import csv
import hashlib
import json
import re
import shutil
import subprocess
from pathlib import Path

import pytest
import torch
import yaml

from repo_env import repo_env

ROOT = Path(__file__).resolve().parents[1]
pytestmark = pytest.mark.slow


def _run(repo: Path, *cmd: str, check: bool = True) -> subprocess.CompletedProcess:
    proc = subprocess.run(cmd, cwd=repo, env=repo_env(), capture_output=True, text=True, timeout=600)
    if check and proc.returncode != 0:
        raise AssertionError(f"{' '.join(cmd)} failed ({proc.returncode}):\n{proc.stdout[-4000:]}\n{proc.stderr[-4000:]}")
    return proc


def _ran(proc: subprocess.CompletedProcess) -> set[str]:
    return set(re.findall(r"Running stage '([^']+)'", proc.stdout + proc.stderr))


def _lock_outs(repo: Path) -> dict[str, list[str]]:
    lock = yaml.safe_load((repo / "dvc.lock").read_text())
    return {name: [o["path"] for o in stage.get("outs", [])] for name, stage in lock["stages"].items()}


def _mlflow(repo: Path):
    from mlflow.tracking import MlflowClient

    client = MlflowClient(tracking_uri=f"sqlite:///{repo / 'mlflow.db'}")
    experiment = client.get_experiment_by_name("tiny")
    assert experiment is not None, "one experiment per profile, named after it"
    runs = client.search_runs([experiment.experiment_id], max_results=1000)
    parents = [r for r in runs if r.data.tags.get("vld.role") == "pipeline"]
    children = {}
    for run in runs:
        parent = run.data.tags.get("mlflow.parentRunId")
        if parent:
            children.setdefault(parent, []).append(run)
    return client, parents, children


def _check_outputs(repo: Path, outs: dict[str, list[str]]) -> None:
    from vld.data.tokens import TokenSet
    from vld.model import load_model
    from vld.retrofit.api import load_retrofit

    for stage, paths in outs.items():
        for rel in paths:
            path = repo / rel
            assert path.exists(), f"{stage}: {rel} missing"
            # a variant's stage writes one entry per seed: seed<s>/ or seed<s>.json
            per_seed = "@" in stage and not stage.startswith("data_")
            seeds = sorted(path.glob("seed*")) if per_seed else []
            assert seeds or not per_seed, f"{stage}: {rel} has no seed entries"
            if rel.startswith("results/records/") and seeds:
                for file in seeds:
                    record = json.loads(file.read_text())
                    assert record["stage_key"] == f"{stage}/{file.stem}" and record["run_id"]
            elif rel.startswith("results/records/"):
                record = json.loads(path.read_text())
                assert record["stage_key"] == stage and record["run_id"]
            elif rel.startswith("results/eval/"):
                for file in seeds:
                    result = json.loads(file.read_text())
                    assert result["variant"] == stage.split("@")[1] and result["params"] > 0
                    assert file.stem == f"seed{result['seed']}"
            elif rel.startswith("results/pretrain/"):
                for where in seeds:
                    model = load_model(where / "model.pt")
                    assert json.loads((where / "metrics.json").read_text())["steps"] == 4
                    config = json.loads((where / "config.json").read_text())
                    assert model.effective_depth == len(config["variant"]["schedule"])
                    assert where.name == f"seed{config['variant']['seed']}"
            elif rel.startswith("results/retrofit/"):
                for where in seeds:
                    model, meta = load_retrofit(where)
                    assert model.effective_depth == 4 and meta["effective_depth"] == 4
            elif rel == "data/igsm/tests":
                assert len(TokenSet.open(path / "op2")) == 8
            elif rel.startswith("data/khop/"):
                from vld.data.khop import read_test_sets

                spec, sets = read_test_sets(path)
                assert sorted(sets) == spec.hop_counts == [0, 1, 2] and len(sets[2][0]) == 16
            elif rel.startswith("data/"):
                assert len(TokenSet.open(path)) >= 1
            elif rel == "results/report":
                assert (path / "report.md").read_text().startswith("# vld report")
                json.loads((path / "metrics.json").read_text())
                assert json.loads((path / "tracking.json").read_text())["stage_key"] == "report"


def _digests(repo: Path) -> dict[str, str]:
    """Each dataset's content hash, as the test computes it: a token set's tokens_sha256, the
    k-hop test sets' meta.json hashed whole, the k-hop training stream's settings hashed."""
    out = {}
    for meta in repo.glob("data/**/meta.json"):
        recorded = json.loads(meta.read_text()).get("tokens_sha256")
        out[meta.parent.name] = recorded or hashlib.sha256(meta.read_bytes()).hexdigest()
    out["igsm_train"] = out.pop("train")
    spec = yaml.safe_load((repo / "params.yaml").read_text())["data"]["khop"]["kh12"]
    out["kh12 stream"] = hashlib.sha256(json.dumps(spec, sort_keys=True).encode()).hexdigest()
    return out


def _check_lineage(repo: Path, client, kids: dict) -> None:
    """MLflow 3's view: a model-training experiment; every training run's dataset inputs (by
    digest) and its logged model, which loads from MLflow to the DVC output's logits."""
    from vld.model import load_model
    from vld.pipeline.tracking import load_logged_model
    from vld.retrofit.api import load_retrofit

    experiment = client.get_experiment_by_name("tiny")
    assert experiment.tags["mlflow.experimentKind"] == "custom_model_development"
    digests = _digests(repo)
    for key, run in kids.items():
        stage = run.data.tags["vld.stage"]
        if not stage.startswith(("pretrain_", "retrofit", "khop_retrofit", "evaluate_")):
            continue
        inputs = run.inputs.dataset_inputs
        context = "test" if stage.startswith("evaluate_") else "training"
        assert inputs, key
        for data in inputs:
            tags = {t.key: t.value for t in data.tags}
            name = data.dataset.name + (" stream" if data.dataset.source_type == "code" else "")
            assert tags["mlflow.data.context"] == context and tags["vld.sha256"] == digests[name], key
            assert data.dataset.digest == digests[name][:32]
        if stage.startswith("evaluate_"):  # the evaluated model is its input, and holds its metrics
            family = stage.split("_", 1)[1]
            retrofit = family in ("retrofit", "khop_retrofit")  # a retrofit family's stage bears its name
            trainer = kids[(family if retrofit else f"pretrain_{family}") + "@" + key.split("@")[1]]
            [evaluated] = client.get_run(run.info.run_id).inputs.model_inputs
            assert [evaluated.model_id] == [o.model_id for o in trainer.outputs.model_outputs], key
            measured = {m.key for m in client.get_logged_model(evaluated.model_id).metrics}
            assert "flops_per_token" in measured and "stage_wall_s" not in measured, key
            continue
        [output] = run.outputs.model_outputs
        model = client.get_logged_model(output.model_id)
        assert model.source_run_id == run.info.run_id and "final_loss" in {m.key for m in model.metrics}, key
    for key, out, load in (("pretrain_khop@cycle_x1/seed1", "results/pretrain/khop/cycle_x1/seed1/model.pt", load_model),
                           ("retrofit@cycle_x1/seed0", "results/retrofit/cycle_x1/seed0", lambda p: load_retrofit(p)[0]),
                           ("khop_retrofit@cycle_x1/seed0", "results/khop_retrofit/cycle_x1/seed0",
                            lambda p: load_retrofit(p)[0])):
        [output] = kids[key].outputs.model_outputs
        from_mlflow = load_logged_model(f"models:/{output.model_id}", f"sqlite:///{repo / 'mlflow.db'}")
        from_dvc = load(repo / out)
        vocab = from_dvc.config.vocab_size if hasattr(from_dvc, "config") else 16
        tokens = torch.randint(0, vocab, (2, 8), generator=torch.Generator().manual_seed(0))
        with torch.no_grad():
            assert torch.equal(from_mlflow(tokens), from_dvc(tokens)), key


def test_dvc_repro_tiny_profile(dvc_project):
    repo = dvc_project
    shutil.copy(ROOT / "conf/profiles/tiny.yaml", repo / "params.yaml")
    (repo / ".gitignore").write_text("/mlflow.db\n/mlruns/\n")
    _run(repo, "git", "init", "-q")
    _run(repo, "dvc", "init", "-q")
    _run(repo, "git", "add", "-A")
    _run(repo, "git", "commit", "-qm", "tiny")

    first = _run(repo, "dvc", "repro")
    outs = _lock_outs(repo)
    stages = set(outs)
    assert stages == {
        "data_igsm_train", "data_igsm_tests", "data_knowledge@rt1k", "pretrain_reasoning@base",
        "pretrain_reasoning@cycle_x1", "pretrain_reasoning@answer_only", "pretrain_knowledge@w16", "retrofit@cycle_x1",
        "evaluate_reasoning@base", "evaluate_reasoning@cycle_x1", "evaluate_reasoning@answer_only",
        "evaluate_knowledge@w16",
        "evaluate_retrofit@cycle_x1", "data_khop@kh12", "pretrain_khop@base", "pretrain_khop@cycle_x1",
        "evaluate_khop@base", "evaluate_khop@cycle_x1", "pretrain_khop@cycle_x1_layers1-1",
        "evaluate_khop@cycle_x1_layers1-1", "khop_retrofit@cycle_x1", "evaluate_khop_retrofit@cycle_x1", "report"}
    assert _ran(first) == stages
    _check_outputs(repo, outs)
    # one MLflow child run per seed of every variant stage (k-hop cycle_x1 has seeds: 2)
    runs = {f"{stage}/seed{seed}" for stage in stages if "@" in stage and not stage.startswith("data_")
            for seed in ((0, 1) if stage.endswith("khop@cycle_x1") else (0,))}
    runs |= {stage for stage in stages if "@" not in stage or stage.startswith("data_")}
    seeds = sorted(p.name for p in (repo / "results/pretrain/khop/cycle_x1").iterdir() if p.name.startswith("seed"))
    assert seeds == ["seed0", "seed1"]
    first_seed, second_seed = (torch.load(repo / f"results/pretrain/khop/cycle_x1/{s}/model.pt", weights_only=True)
                               for s in seeds)
    assert any(not torch.equal(first_seed["state_dict"][k], second_seed["state_dict"][k])
               for k in first_seed["state_dict"])  # each seed its own model

    client, parents, children = _mlflow(repo)
    assert len(parents) == 1
    parent = parents[0]
    kids = {r.data.tags["vld.stage_key"]: r for r in children[parent.info.run_id]}
    assert set(kids) == runs and len(children[parent.info.run_id]) == len(runs)
    assert all(r.info.status == "FINISHED" and r.data.tags["vld.restored"] == "false" for r in kids.values())
    assert {kids[f"pretrain_khop@cycle_x1/seed{s}"].data.params["seed"] for s in (0, 1)} == {"0", "1"}
    assert kids["pretrain_khop@cycle_x1/seed1"].data.tags["vld.variant"] == "cycle_x1"
    assert parent.data.tags["vld.git_commit"] == _run(repo, "git", "rev-parse", "HEAD").stdout.strip()
    curve = client.get_metric_history(kids["pretrain_reasoning@cycle_x1/seed0"].info.run_id, "train/loss")
    assert [m.step for m in curve] == [0, 1, 2, 3]  # the training curve, one point per step
    stacked = client.get_metric_history(kids["pretrain_khop@cycle_x1/seed1"].info.run_id, "train/loss")
    assert [m.step for m in stacked] == [0, 1, 2, 3]  # a stacked seed's curve: the same steps, its own values
    own = json.loads((repo / "results/pretrain/khop/cycle_x1/seed1/metrics.json").read_text())["loss_curve"]
    assert [m.value for m in sorted(stacked, key=lambda m: m.step)] == pytest.approx(own, rel=1e-6)
    pre = kids["pretrain_reasoning@cycle_x1/seed0"].data
    assert pre.params["pattern"] == "cycle" and pre.params["effective_depth"] == "4"
    assert pre.tags["vld.pattern"] == "cycle" and pre.tags["vld.k"] == "1"
    assert re.fullmatch(r"[0-9a-f]{64}", pre.tags["vld.data.igsm_train.sha256"])
    assert {"final_loss", "train_tokens_per_s", "host_gemm_gflops_start", "host_gemm_gflops_end"} <= set(pre.metrics)
    assert pre.metrics["host_gemm_gflops_start"] > 0 and pre.metrics["host_gemm_gflops_end"] > 0
    ev = kids["evaluate_reasoning@base/seed0"].data.metrics
    assert {"igsm.op2.answer_accuracy", "params", "flops_per_token"} <= set(ev), sorted(ev)
    assert 0.0 <= ev["igsm.op2.answer_accuracy"] <= 1.0
    assert any(key.startswith("knowledge.") for key in kids["evaluate_knowledge@w16/seed0"].data.metrics)
    assert {"khop.k2.error", "khop.k2.exact_match"} <= set(kids["evaluate_khop@cycle_x1/seed1"].data.metrics)
    khop = json.loads((repo / "results/eval/khop/cycle_x1/seed1.json").read_text())
    assert khop["family"] == "khop" and khop["effective_depth"] == 4 and khop["depth_use"]["schema"] == "vld.depth_use/1"
    trained = json.loads((repo / "results/pretrain/khop/cycle_x1/seed1/metrics.json").read_text())
    assert khop["train_host_gflops"] == [trained["host_gemm_gflops_start"], trained["host_gemm_gflops_end"]]
    # test-time depth (cycle x1: 1..5 repeats, the trained 2 = the ordinary evaluation) and the
    # learning curve of a seed trained stacked, in its result and in MLflow
    looped = khop["test_time_depth"]
    assert sorted(looped["repeats"], key=int) == ["1", "2", "3", "4", "5"] and looped["trained_repeats"] == 2
    assert looped["repeats"]["2"]["hops"]["2"]["error"] == khop["khop"]["hops"]["2"]["error"]
    assert khop["learning_curve"]["steps"] == [0, 2, 4]
    curve = client.get_metric_history(kids["pretrain_khop@cycle_x1/seed1"].info.run_id, "curve/error_hop2")
    assert [m.step for m in curve] == [0, 2, 4] and [m.value for m in curve] == khop["learning_curve"]["error_hop2"]
    assert json.loads((repo / "results/eval/khop/base/seed0.json").read_text())["test_time_depth"] == {}
    assert "Test-time depth (khop)" in (repo / "results/report/report.md").read_text()
    report = (repo / "results/report/report.md").read_text()
    assert "k-hop induction: per-position error by hop count" in report and "The paper's claims" in report
    assert "final_loss" in kids["retrofit@cycle_x1/seed0"].data.metrics
    # the layer-subset k-hop variant (Table 7) and the k-hop retrofit (Table 2 on k-hop)
    subset = json.loads((repo / "results/eval/khop/cycle_x1_layers1-1/seed0.json").read_text())
    assert (subset["layers"], subset["schedule"], subset["effective_depth"]) == ("1..1", [0, 1, 1], 3)
    refit = json.loads((repo / "results/eval/khop_retrofit/cycle_x1/seed0.json").read_text())
    assert (refit["family"], refit["source"], refit["data"], refit["schedule"]) == ("khop_retrofit", "base", "kh12",
                                                                                    [0, 1, 0, 1])
    assert refit["train_steps"] == 2 and set(refit["khop"]["hops"]) == {"0", "1", "2"}
    ft = kids["khop_retrofit@cycle_x1/seed0"].data
    assert "final_loss" in ft.metrics and ft.tags["vld.source"] == "base" and ft.tags["vld.data"] == "kh12"
    assert re.fullmatch(r"[0-9a-f]{64}", ft.tags["vld.source.sha256"])
    assert "## Table 7 on k-hop: layer-subset reuse" in report and "| cycle x1, 2 layers, reusing 1..1 |" in report
    assert "## Table 2 on k-hop: retrofit" in report and "| Cycle x1 (retrofit) | cycle x1, 2 layers, from base |" in report
    claim_rows = {(r["#"], r["family"]): r for r in csv.DictReader(open(repo / "results/report/claims.csv"))}
    assert claim_rows[("6", "khop_retrofit")]["why"] == "not in this family: no retrofit with and without reuse"
    answer_only = json.loads((repo / "results/eval/reasoning/answer_only/seed0.json").read_text())
    assert answer_only["objective"] == "answer_only" and answer_only["igsm"]["op2"]["solution_accuracy"] is None
    assert kids["pretrain_reasoning@answer_only/seed0"].data.tags["vld.objective"] == "answer_only"
    assert "| base (answer only) |" in report
    artifacts = [a.path for a in client.list_artifacts(kids["report"].info.run_id, "report")]
    assert "report/report.md" in artifacts
    assert client.get_run(parent.info.run_id).info.status == "FINISHED"
    config = {a.path for a in client.list_artifacts(parent.info.run_id, "config")}
    assert config == {"config/params.yaml", "config/resolved_variants.json"}
    _check_lineage(repo, client, kids)
    # DVC's plots of the report's data, on the offline page the project's .dvc/config names
    shutil.copy(ROOT / ".dvc/config", repo / ".dvc/config")
    shown = _run(repo, "dvc", "plots", "show", "-o", str(repo.parent / "plots")).stdout
    page = (repo.parent / "plots/index.html").read_text()
    assert "plots/index.html" in shown and not re.search(r"<script[^>]*\bsrc=", page)
    assert all(f'<div id = "{name}">' in page for name in ("khop_error", "knowledge_bits", "loss_curves"))

    # nothing changed: nothing runs
    second = _run(repo, "dvc", "repro")
    assert _ran(second) == set()
    assert "up to date" in _run(repo, "dvc", "status").stdout

    # one variant edited: only its stages and the report run
    params = yaml.safe_load((repo / "params.yaml").read_text())
    params["reasoning"]["variants"]["cycle_x1"]["train"] = {"max_steps": 3}
    (repo / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))
    third = _run(repo, "dvc", "repro")
    changed = {"pretrain_reasoning@cycle_x1", "evaluate_reasoning@cycle_x1", "report"}
    assert _ran(third) == changed
    assert "re-attached" in third.stdout
    assert json.loads((repo / "results/pretrain/reasoning/cycle_x1/seed0/metrics.json").read_text())["steps"] == 3

    # the new parent (new params.yaml) holds every stage: the re-run ones plus restored records
    client, parents, children = _mlflow(repo)
    assert len(parents) == 2
    new_parent = next(p for p in parents if p.info.run_id != parent.info.run_id)
    kids = {r.data.tags["vld.stage_key"]: r for r in children[new_parent.info.run_id]}
    assert set(kids) == runs and len(children[new_parent.info.run_id]) == len(runs)
    restored = {key for key, r in kids.items() if r.data.tags["vld.restored"] == "true"}
    assert restored == {key for key in runs if key.split("/")[0] not in changed}
    old = kids["pretrain_reasoning@base/seed0"]
    assert old.data.tags["vld.original_run_id"] not in ("", "None", old.info.run_id)
    assert len(client.get_metric_history(old.info.run_id, "train/loss")) == 4  # curve copied
    assert kids["evaluate_reasoning@base/seed0"].data.metrics["igsm.op2.answer_accuracy"] == ev["igsm.op2.answer_accuracy"]
    # a restored run links the original logged model and logs the same dataset inputs
    assert [o.model_id for o in old.outputs.model_outputs] == [
        o.model_id for o in client.get_run(old.data.tags["vld.original_run_id"]).outputs.model_outputs]
    assert [d.dataset.digest for d in old.inputs.dataset_inputs] == [
        d.dataset.digest for d in client.get_run(old.data.tags["vld.original_run_id"]).inputs.dataset_inputs]

    # a variant added: only its own stages are out of date, and the report (it reads params.yaml)
    params["knowledge"]["variants"]["w16_cycle"] = {"model": "k16", "data": "rt1k",
                                                    "schedule": {"pattern": "cycle", "k": 1}}
    (repo / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))
    status = json.loads(_run(repo, "dvc", "status", "--json").stdout)
    assert set(status) == {"pretrain_knowledge@w16_cycle", "evaluate_knowledge@w16_cycle", "report"}

    # code is a dependency: an edit puts exactly the stages it feeds out of date; bytecode does not
    def out_of_date() -> set[str]:
        new_variant = {"pretrain_knowledge@w16_cycle", "evaluate_knowledge@w16_cycle"}
        return set(json.loads(_run(repo, "dvc", "status", "--json").stdout)) - new_variant

    with open(repo / "src/vld/report/tables.py", "a") as f:
        f.write("# an edit\n")
    assert out_of_date() == {"report"}  # (params.yaml changed too: report was out of date already)
    (repo / "src/vld/model/__pycache__").mkdir()
    (repo / "src/vld/model/__pycache__/transformer.cpython-311.pyc").write_bytes(b"\0")
    assert out_of_date() == {"report"}
    with open(repo / "src/vld/eval/compute.py", "a") as f:
        f.write("# an edit\n")
    evaluations = {key for key in stages if key.startswith("evaluate_")}
    assert out_of_date() == {"report"} | evaluations
    with open(repo / "src/vld/model/transformer.py", "a") as f:
        f.write("# an edit\n")
    assert out_of_date() == stages - {"data_igsm_train", "data_igsm_tests", "data_knowledge@rt1k", "data_khop@kh12"}

    # a DVC experiment (`dvc exp run -S`) runs the stages the override touches, and is listed
    for name in ("report/tables.py", "eval/compute.py", "model/transformer.py"):
        shutil.copy(ROOT / "src/vld" / name, repo / "src/vld" / name)
    del params["knowledge"]["variants"]["w16_cycle"]
    (repo / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))
    assert "up to date" in _run(repo, "dvc", "status").stdout
    experiment = _run(repo, "dvc", "exp", "run", "-S", "knowledge.train.max_steps=3", "-n", "k3")
    assert _ran(experiment) == {"pretrain_knowledge@w16", "evaluate_knowledge@w16", "report"}
    assert json.loads((repo / "results/pretrain/knowledge/w16/seed0/metrics.json").read_text())["steps"] == 3
    table = _run(repo, "dvc", "exp", "show", "--csv", "--drop", ".*", "--keep", "Experiment|knowledge.train.max_steps")
    assert "k3,3" in table.stdout.splitlines(), table.stdout

    # `k: true` equals 1 to DVC, so no variant's params changed; the report reads params.yaml
    # whole and stops the repro with vld's line instead of "up to date"
    params["reasoning"]["variants"]["cycle_x1"]["schedule"]["k"] = True
    (repo / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))
    bad = _run(repo, "dvc", "repro", check=False)
    assert bad.returncode != 0 and "Traceback" not in bad.stdout + bad.stderr
    errors = [line for line in (bad.stdout + bad.stderr).splitlines() if line.startswith("vld: error:")]
    assert errors == ["vld: error: reasoning.variants.cycle_x1.schedule.k: must be an integer, got True"]
