"""The lm_retrofit family (docs/lm_retrofit.md) on a tiny random Llama written here, with a
byte-level tokenizer and chat template built here (tests/lm_fixtures.py): SFT labels on the
assistant's tokens only, vld's lm-eval model against lm-eval's own `hf` model, cached against
uncached generation with a cycle, a killed fine-tuning stage resumed, the whole family through
`dvc repro`, and one-line errors for bad input."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
import yaml

import lm_fixtures as F
from repo_env import repo_env
from vld.errors import UserError

ROOT = Path(__file__).resolve().parents[1]
STAGE_SCRIPT = ROOT / "tests" / "scripts" / "stage_exit_after_step.py"
os.environ.update(HF_HUB_OFFLINE="1", TRANSFORMERS_OFFLINE="1", HF_DATASETS_OFFLINE="1")


@pytest.fixture(scope="module")
def ckpt(tmp_path_factory) -> Path:
    return F.write_llama(tmp_path_factory.mktemp("llama") / "ckpt", n_layers=4)


def _spec(ckpt: Path, folder: Path, files=(("a.jsonl", 1.0),), max_tokens=96):
    from vld.data.sft import SftSpec

    return SftSpec.from_dict({"source": str(ckpt), "dir": str(folder), "max_tokens": max_tokens,
                              "files": [{"path": p, "weight": w} for p, w in files]}, "data.sft.chat")


def _spans(ids: np.ndarray, mask: np.ndarray) -> list[list[int]]:
    """Maximal runs of tokens where mask is 1."""
    spans, current = [], []
    for token, on in zip(ids.tolist(), mask.tolist()):
        if on:
            current.append(token)
        elif current:
            spans.append(current)
            current = []
    return spans + ([current] if current else [])


# ------------------------------------------------------------------------------ (a) SFT data


def test_sft_labels_only_the_assistant_tokens(ckpt, tmp_path):
    from vld.data.sft import make_sft, sft_rows
    from vld.train.datamodules import SftDataModule

    F.write_chats(tmp_path / "a.jsonl")
    make_sft(_spec(ckpt, tmp_path), tmp_path / "set", "data.sft.chat")
    tokens, assistant, mixture = sft_rows(tmp_path / "set")
    tok = F.tokenizer()
    assert len(tokens) == len(F.CHATS) and mixture.tolist() == list(range(len(F.CHATS)))
    data = SftDataModule(tmp_path / "set", micro_batch_size=2)
    for i, chat in enumerate(F.CHATS):
        ids, mask = tokens.sample(i).astype(np.int64), np.asarray(assistant[tokens.index[i]:tokens.index[i + 1]])
        # the whole conversation is the template's rendering; the labelled spans are exactly
        # each assistant message and its end-of-turn token, in order
        assert tok.decode(ids.tolist(), skip_special_tokens=False) == tok.apply_chat_template(chat, tokenize=False)
        expected = [m["content"] + "<|end|>" for m in chat if m["role"] == "assistant"]
        assert [tok.decode(span, skip_special_tokens=False) for span in _spans(ids, mask)] == expected
        row = data.conversations[(0, i)]
        n = len(ids)
        # labels: position t predicts token t + 1 where that token is the assistant's, else -1
        want = np.full(data.seq_len, -1)
        want[: n - 1] = np.where(mask[1:] == 1, ids[1:], -1)
        assert row["labels"].tolist() == want.tolist()
        assert row["inputs"][: n - 1].tolist() == ids[:-1].tolist()


def test_sft_set_is_deterministic_and_mixes_by_weight(ckpt, tmp_path):
    from vld.data.sft import make_sft, sft_rows
    from vld.data.tokens import recorded_sha256

    F.write_chats(tmp_path / "a.jsonl")
    F.write_chats(tmp_path / "b.jsonl", F.CHATS[:2])
    spec = _spec(ckpt, tmp_path, files=(("a.jsonl", 2.0), ("b.jsonl", 0.5)))
    for name in ("one", "two"):
        make_sft(spec, tmp_path / name, "data.sft.chat")
    assert recorded_sha256(tmp_path / "one") == recorded_sha256(tmp_path / "two")
    one, two = sft_rows(tmp_path / "one")[2], sft_rows(tmp_path / "two")[2]
    assert one.tolist() == two.tolist()
    # a.jsonl (conversations 0-3) twice, one of b.jsonl's two (4, 5)
    assert sorted(one.tolist()[:8]) == sorted([0, 1, 2, 3] * 2) and len(one) == 9 and one[8] in (4, 5)


# ------------------------------------------------------------- (b), (c) lm-eval model class


def _requests(kind: str, arguments: list[tuple]):
    from lm_eval.api.instance import Instance

    return [Instance(request_type=kind, doc={}, arguments=args, idx=i) for i, args in enumerate(arguments)]


LOGLIKELIHOOD = [("Sky colour?", " blue"), ("Sky colour?", " loud"), ("2+2=", "4"), ("", "hello there"),
                 ("A long context that is longer than the others", " ok")]
GENERATE = [("Echo ab:", {"until": ["<|end|>"], "max_gen_toks": 7}), ("1 2 3", {"until": ["\n"], "max_gen_toks": 5}),
            ("Say yes, a longer prompt:", {"until": ["<|end|>"], "max_gen_toks": 6})]


def test_vld_model_scores_like_lm_evals_hf_model(ckpt, one_thread):
    """Identity schedule, no training: the same log-likelihoods (float tolerance) and the same
    generations as lm-eval's own `hf` model on the same checkpoint."""
    from lm_eval.models.huggingface import HFLM

    from vld.eval.lm_harness import VldLM
    from vld.retrofit.sources import inspect_source, load_source

    model = load_source(inspect_source(ckpt))
    ours = VldLM(model=model, tokenizer=F.tokenizer(), batch_size=2, device="cpu")
    theirs = HFLM(pretrained=str(ckpt), device="cpu", dtype="float32", batch_size=2)
    a = ours.loglikelihood(_requests("loglikelihood", LOGLIKELIHOOD))
    b = theirs.loglikelihood(_requests("loglikelihood", LOGLIKELIHOOD))
    assert [greedy for _, greedy in a] == [greedy for _, greedy in b]
    assert [ll for ll, _ in a] == pytest.approx([ll for ll, _ in b], abs=1e-4)
    rolling = [("The quick brown fox jumps over the lazy dog.",), ("hi",)]
    assert ours.loglikelihood_rolling(_requests("loglikelihood_rolling", rolling)) == pytest.approx(
        theirs.loglikelihood_rolling(_requests("loglikelihood_rolling", rolling)), abs=1e-4)
    ours_text = ours.generate_until(_requests("generate_until", GENERATE))
    assert ours_text == theirs.generate_until(_requests("generate_until", GENERATE))
    assert any(text for text in ours_text)  # something was generated to compare


def _uncached_greedy(model, prompt: list[int], max_new: int, eos: int) -> list[int]:
    """Greedy decoding by re-running the whole sequence every step (no cache, no batching)."""
    tokens = list(prompt)
    with torch.no_grad():
        for _ in range(max_new):
            nxt = int(model(torch.tensor([tokens]))[0, -1].argmax())
            tokens.append(nxt)
            if nxt == eos:
                break
    return tokens[len(prompt):]


def test_cycle_generation_through_the_cache_equals_uncached(ckpt, one_thread):
    from vld.eval.lm_harness import VldLM
    from vld.retrofit.sources import inspect_source, load_source

    model = load_source(inspect_source(ckpt))
    model.set_schedule([0, 1, 2, 1, 2, 1, 2, 3])  # the middle layers cycled three times
    tok = F.tokenizer()
    lm = VldLM(model=model, tokenizer=tok, batch_size=3, device="cpu")
    prompts = [tok(text)["input_ids"] for text, _ in GENERATE]
    context, mask = (torch.zeros(3, max(map(len, prompts)), dtype=torch.long) for _ in range(2))
    for row, prompt in enumerate(prompts):  # left-padded, as lm-eval batches them
        context[row, context.shape[1] - len(prompt):] = torch.tensor(prompt)
        mask[row, context.shape[1] - len(prompt):] = 1
    out = lm._model_generate(context, context.shape[1] + 9, stop=[], attention_mask=mask)
    for row, prompt in enumerate(prompts):
        want = _uncached_greedy(model, prompt, 9, tok.eos_token_id)
        assert out[row, context.shape[1]: context.shape[1] + len(want)].tolist() == want
    # and lm-eval's requests: each text is the uncached continuation, cut at its stop sequence
    texts = lm.generate_until(_requests("generate_until", GENERATE))
    for (prompt_text, kwargs), text, prompt in zip(GENERATE, texts, prompts):
        want = tok.decode(_uncached_greedy(model, prompt, kwargs["max_gen_toks"], tok.eos_token_id),
                          skip_special_tokens=False)
        for stop in kwargs["until"]:
            want = want.split(stop)[0]
        assert text == want


# ------------------------------------------------------------------------- the report table


def test_table2_puts_base_and_cycle_beside_the_paper(tmp_path):
    from vld.report.build import build_report

    def result(variant, pattern, seed, acc, se):
        # humaneval_instruct's metric is filtered (vld.eval.lm_harness names it pass@1.create_test)
        return {"schema": "vld.lm_eval/1", "variant": variant, "family": "lm_retrofit", "pattern": pattern,
                "k": 0 if pattern == "base" else 1, "seed": seed, "effective_depth": 4 if pattern == "base" else 6,
                "tasks": {"gpqa_main_zeroshot": {"acc": acc, "acc_stderr": se, "acc_norm": 0.9, "acc_norm_stderr": 0.1},
                          "humaneval_instruct": {"pass@1.create_test": acc - 0.1 * seed, "pass@1_stderr.create_test": 0.04},
                          "vld_local": {"exact_match": 0.5, "exact_match_stderr": 0.25}}}

    where = tmp_path / "eval" / "lm_retrofit"
    for variant, pattern, seed, acc, se in (("base", "base", 0, 0.30, 0.05), ("cycle", "cycle", 0, 0.40, 0.06),
                                            ("cycle", "cycle", 1, 0.50, 0.08)):
        (where / variant).mkdir(parents=True, exist_ok=True)
        (where / variant / f"seed{seed}.json").write_text(json.dumps(result(variant, pattern, seed, acc, se)))
    build_report(tmp_path / "eval", tmp_path / "report", "tiny")
    half_cycle = 1.96 * (0.06 ** 2 + 0.08 ** 2) ** 0.5 / 2  # the standard error of a mean of two seeds
    import csv

    rows = list(csv.reader((tmp_path / "report" / "table2_lm.csv").read_text().splitlines()))
    assert rows[0] == ["task", "metric", "base (Base, depth 4, 1 seed)", "cycle (cycle, depth 6, 2 seeds)",
                       "paper Base", "paper Cycle"]
    assert rows[1] == ["gpqa_main_zeroshot", "acc", "30.00 [20.20, 39.80]",
                       f"45.00 [{100 * (0.45 - half_cycle):.2f}, {100 * (0.45 + half_cycle):.2f}]", "29.8", "32.32"]
    half_code = 1.96 * (2 * 0.04 ** 2) ** 0.5 / 2
    assert rows[2] == ["humaneval_instruct", "pass@1.create_test", "30.00 [22.16, 37.84]",
                       f"40.00 [{100 * (0.40 - half_code):.2f}, {100 * (0.40 + half_code):.2f}]", "37.79", "39.52"]
    assert rows[3] == ["vld_local", "exact_match", "50.00 [1.00, 99.00]", "50.00 [15.35, 84.65]", "", ""]
    assert "Table 2 on a language model" in (tmp_path / "report" / "report.md").read_text()
    # claim 6 from the same results: Cycle - Base, mean over the three tasks ((0.45 - 0.30) +
    # (0.40 - 0.30) + 0) / 3; one Base seed: not shown, the effect printed (the rule: tests/test_claims.py)
    claim6 = [row for row in csv.reader((tmp_path / "report" / "claims.csv").read_text().splitlines())
              if row[0] == "6" and row[2] == "lm_retrofit"]
    assert len(claim6) == 1 and claim6[0][4].startswith("+8.3 [") and claim6[0][5] == "**not shown**"
    assert claim6[0][6].startswith("not shown: 1 seed(s), training noise unknown; 2 vs 1 seeds; per task: "
                                   "gpqa_main_zeroshot acc +15.0, humaneval_instruct pass@1.create_test +10.0,"
                                   " vld_local exact_match +0.0")
    metrics = json.loads((tmp_path / "report" / "metrics.json").read_text())["claims"]["claim_6"]["lm_retrofit"]
    assert metrics["verdict_code"] == 0 and metrics["effect"] == pytest.approx(0.25 / 3)
    # the report stage passes every evaluation file's contents (vld.pipeline.report.current_results):
    # the lm-eval results among them go to the same table and claim
    loaded = [json.loads(path.read_text()) for path in sorted(where.rglob("*.json"))]
    build_report(loaded, tmp_path / "from_dicts", "tiny")
    # and python -m vld.report on the lm-eval results alone (docs/lm_retrofit.md, "The command")
    cli = subprocess.run([sys.executable, "-m", "vld.report", "--results", str(where), "--out", str(tmp_path / "cli"),
                          "--profile", "tiny"], env=repo_env(), capture_output=True, text=True)
    assert cli.returncode == 0, cli.stderr[-2000:]
    for name in ("table2_lm.csv", "claims.csv"):
        for other in ("from_dicts", "cli"):
            assert (tmp_path / other / name).read_text() == (tmp_path / "report" / name).read_text()


# --------------------------------------------------------------------- (f) one-line errors


def _raw(ckpt: Path, chats: Path) -> dict:
    from vld.pipeline.params import load_yaml

    raw = load_yaml(ROOT / "conf/profiles/tiny.yaml")
    raw["data"]["sft"] = {"chat": {"source": str(ckpt), "dir": str(chats), "files": ["a.jsonl"], "max_tokens": 96}}
    raw["lm_retrofit"] = {"train": {"max_steps": 4, "global_batch_size": 4, "micro_batch_size": 2, "log_every": 1,
                                    "checkpoint_every": 2, "optim": {"lr": 0.01}},
                          "eval": {"tasks": ["vld_tiny_mc", "vld_tiny_gen"], "include_path": "tasks", "batch_size": 2},
                          "variants": {"base": {"data": "chat", "schedule": {"pattern": "base"}},
                                       "cycle": {"data": "chat", "schedule": {"pattern": "cycle", "k": 1,
                                                                              "layers": "1..2"}}}}
    return raw


def _error(raw: dict) -> str:
    from vld.pipeline.params import validate

    with pytest.raises(UserError) as info:
        validate(raw)
    assert "\n" not in str(info.value)
    return str(info.value)


def test_valid_family_and_its_variants(ckpt, tmp_path):
    from vld.pipeline.params import validate

    pipeline = validate(_raw(ckpt, tmp_path))
    cycle = pipeline.variant("lm_retrofit", "cycle")
    assert cycle.schedule == [0, 1, 2, 1, 2, 3] and cycle.method == "lora" and cycle.lora_rank == 4
    assert cycle.train.seq_len == 95 and pipeline.variant("lm_retrofit", "base").schedule == [0, 1, 2, 3]


def test_bad_input_is_one_line(ckpt, tmp_path):
    raw = _raw(ckpt, tmp_path)
    del raw["data"]["sft"]["chat"]["source"]
    assert _error(raw).startswith("data.sft.chat.source: missing: set the path of a local Hugging Face Llama")
    raw = _raw(tmp_path / "nowhere", tmp_path)
    assert _error(raw) == f"data.sft.chat.source: {tmp_path / 'nowhere'} is not a directory (a local Hugging Face" \
                          " Llama checkpoint; nothing is downloaded)"
    gpt2 = F.write_llama(tmp_path / "gpt2", model_type="gpt2")
    assert _error(_raw(gpt2, tmp_path)) == f"data.sft.chat.source: {gpt2} is a 'gpt2' model, an unsupported" \
                                            " architecture (supported: llama): only Llama checkpoints can be retrofitted"
    raw = _raw(ckpt, tmp_path)
    raw["lm_retrofit"]["eval"]["gen_kwargs"] = {"do_sample": True}
    assert "vld's cached generation is greedy" in _error(raw)
    raw = _raw(ckpt, tmp_path)
    raw["lm_retrofit"]["variants"]["cycle"]["schedule"]["layers"] = "2..7"
    assert _error(raw).startswith("lm_retrofit.variants.cycle.schedule")


def test_fsdp_is_refused_on_cpu_and_for_other_families(ckpt, tmp_path):
    """Lightning 2.6.6's FSDPStrategy runs on CUDA only (docs/lm_retrofit.md#multi-gpu): on CPU the
    setting stops validation in one line naming the key that set it, before any compute; and only
    lm_retrofit's model names the blocks FSDP shards."""
    import lightning

    from vld.pipeline.params import validate

    assert lightning.__version__ == "2.6.6"  # the version the refusal and the docs quote
    with pytest.raises(ValueError, match="The strategy `fsdp` requires a GPU accelerator"):
        lightning.Trainer(accelerator="cpu", strategy="fsdp", devices=1)  # Lightning's own refusal, quoted
    raw = _raw(ckpt, tmp_path)
    raw["lm_retrofit"]["train"]["strategy"] = "fsdp"
    assert _error(raw) == ("lm_retrofit.train.strategy: 'fsdp' needs accelerator gpu, not 'cpu': Lightning 2.6.6's"
                           " FSDPStrategy runs on CUDA only (docs/lm_retrofit.md#multi-gpu); use ddp or auto on CPU")
    raw = _raw(ckpt, tmp_path)
    raw["hardware"].update(accelerator="gpu", precision="bf16-mixed", strategy="fsdp")
    assert _error(raw).startswith("hardware.strategy: 'fsdp' shards only lm_retrofit models, not ")
    # on a GPU the family takes it (validation imports no torch: no GPU is needed to validate)
    for family in ("reasoning", "knowledge", "retrofit", "khop", "khop_retrofit"):
        raw[family] = {"variants": {}}
    raw["hardware"]["strategy"] = "ddp"
    raw["lm_retrofit"]["train"]["strategy"] = "fsdp"
    assert validate(raw).variant("lm_retrofit", "cycle").train.strategy == "fsdp"


@pytest.mark.parametrize("line, what", [
    ("not json", "not a JSON object"),
    (json.dumps({"text": "hi"}), "needs a \"messages\" list"),
    (json.dumps({"messages": [{"role": "user", "content": "hi"}]}), "has no assistant message"),
    (json.dumps({"messages": [{"role": "robot", "content": "hi"}]}), "message 0 has role 'robot'"),
    (json.dumps({"messages": [{"role": "user", "content": 3}]}), "message 0 must be"),
])
def test_malformed_chat_line_names_file_and_line(ckpt, tmp_path, line, what):
    from vld.data.sft import make_sft

    F.write_chats(tmp_path / "a.jsonl", F.CHATS[:2])
    with open(tmp_path / "a.jsonl", "a") as handle:
        handle.write(line + "\n")
    with pytest.raises(UserError) as info:
        make_sft(_spec(ckpt, tmp_path), tmp_path / "set", "data.sft.chat")
    assert str(info.value).startswith(f"{tmp_path / 'a.jsonl'}:3: {what}")
    assert not (tmp_path / "set").exists()


# ------------------------------------------------- (d), (e) the stages: resume and dvc repro


def _run(cwd: Path, *cmd: str, env: dict | None = None) -> subprocess.CompletedProcess:
    return subprocess.run(cmd, cwd=cwd, env=env or repo_env(), capture_output=True, text=True, timeout=900)


def _project(repo: Path, ckpt: Path) -> Path:
    """A repository holding the family: checkpoint, chats, local tasks, params.yaml (tiny + lm_retrofit)."""
    shutil.copytree(ckpt, repo / "ckpt")
    (repo / "chats").mkdir(parents=True)
    F.write_chats(repo / "chats" / "a.jsonl")
    F.write_tasks(repo / "tasks", Path("tasks"))
    (repo / "params.yaml").write_text(yaml.safe_dump(_raw(Path("ckpt"), Path("chats")), sort_keys=False))
    return repo


@pytest.mark.slow
def test_killed_sft_stage_resumes_to_the_uninterrupted_result(ckpt, tmp_path):
    from safetensors.torch import load_file

    repos = {name: _project(tmp_path / name, ckpt) for name in ("killed", "whole")}
    env = dict(repo_env(), VLD_TRACKING="0")
    for repo in repos.values():
        made = _run(repo, sys.executable, "-m", "vld.pipeline.data_sft", "--dataset", "chat", env=env)
        assert made.returncode == 0, made.stderr[-3000:]
    args = ("lm_retrofit", "--variant", "cycle")
    # checkpoints at step 2 (and at the end, step 4): killed after step 3, it resumes from step 2
    killed = _run(repos["killed"], sys.executable, str(STAGE_SCRIPT), *args, env=dict(env, VLD_TEST_EXIT_AFTER_STEP="3"))
    assert killed.returncode == 17, killed.stderr[-3000:]
    out = Path("results/lm_retrofit/cycle/seed0")
    assert not (repos["killed"] / out).exists()
    for name in ("killed", "whole"):
        done = _run(repos[name], sys.executable, "-m", "vld.pipeline.lm_retrofit", "--variant", "cycle", env=env)
        assert done.returncode == 0, done.stderr[-3000:]
    a, b = (json.loads((repos[name] / out / "metrics.json").read_text()) for name in ("killed", "whole"))
    assert a["resumed_from_step"] == 2 and b["resumed_from_step"] == 0
    for key in ("final_loss", "steps", "tokens_seen", "loss_curve"):
        assert a[key] == b[key], key
    wa, wb = (load_file(repos[name] / out / "model/hf/model.safetensors") for name in ("killed", "whole"))
    assert wa.keys() == wb.keys() and all(torch.equal(wa[k], wb[k]) for k in wa)


@pytest.mark.slow
def test_dvc_repro_runs_the_family(dvc_project, ckpt):
    repo = _project(dvc_project, ckpt)
    (repo / ".gitignore").write_text("/mlflow.db\n/mlruns/\n")
    for cmd in (("git", "init", "-q"), ("dvc", "init", "-q"), ("git", "add", "-A"), ("git", "commit", "-qm", "lm")):
        assert _run(repo, *cmd).returncode == 0
    first = _run(repo, "dvc", "repro", "evaluate_lm_retrofit")
    assert first.returncode == 0, first.stdout[-4000:] + first.stderr[-4000:]
    lock = yaml.safe_load((repo / "dvc.lock").read_text())["stages"]
    assert set(lock) == {"data_sft@chat", "lm_retrofit@base", "lm_retrofit@cycle", "evaluate_lm_retrofit@base",
                         "evaluate_lm_retrofit@cycle"}
    results = {name: json.loads((repo / f"results/eval/lm_retrofit/{name}/seed0.json").read_text())
               for name in ("base", "cycle")}
    assert results["cycle"]["schedule"] == [0, 1, 2, 1, 2, 3] and results["base"]["schedule"] == [0, 1, 2, 3]
    for result in results.values():
        assert set(result["tasks"]) == {"vld_tiny_mc", "vld_tiny_gen"}
        assert 0.0 <= result["tasks"]["vld_tiny_mc"]["acc"] <= 1.0 and "acc_stderr" in result["tasks"]["vld_tiny_mc"]
        assert result["samples"] == {"vld_tiny_mc": 3, "vld_tiny_gen": 3}
    import mlflow

    client = mlflow.MlflowClient(f"sqlite:///{repo / 'mlflow.db'}")
    runs = client.search_runs([e.experiment_id for e in client.search_experiments()])
    by_key = {r.data.tags.get("vld.stage_key"): r for r in runs}
    metrics = by_key["evaluate_lm_retrofit@cycle/seed0"].data.metrics
    assert metrics["lm_eval.vld_tiny_mc.acc"] == results["cycle"]["tasks"]["vld_tiny_mc"]["acc"]
    assert "final_loss" in by_key["lm_retrofit@base/seed0"].data.metrics
    again = _run(repo, "dvc", "repro", "evaluate_lm_retrofit")
    assert "Running stage" not in again.stdout, again.stdout[-2000:]
