"""vld.pipeline.tracking beyond the faults of test_reliability: the report's replay of records
(real MLflow sqlite store), and MLflow's http retries bounded without touching os.environ
(a local http server standing in for an MLflow server that answers its health check only)."""

from __future__ import annotations

import contextlib
import json
import os
import threading
import types
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest

from test_reliability import _client, _runs, one_line, store  # noqa: F401  (the fixture)
from vld.errors import UserError
from vld.pipeline import tracking
from vld.pipeline.tracking.store import HTTP_MAX_RETRIES


def test_report_replays_the_records_of_cached_stages_under_the_new_parent(store):
    repo, pipeline = store
    with tracking.tracked(pipeline, "train", "v", {"lr": 0.5}, {"vld.pattern": "cycle"}) as run:
        run.log_metrics({"loss": 2.0}, step=1)
        run.log_metrics({"loss": 1.0, "acc": True}, step=2)
        (repo / "results").mkdir()
        (repo / "results" / "out.json").write_text("{}")
        run.add_artifact(repo / "results" / "out.json")
        original = run.finish()
    # a new params.yaml: a new parent, under which the train stage (restored by DVC) has no child
    (repo / "params.yaml").write_text("profile: rel\nx: 1\n")
    variant = types.SimpleNamespace(to_dict=lambda: {"lr": 0.5})
    pipeline.variants = {"reasoning": {"v": variant}}
    with tracking.tracked(pipeline, "report", None, {}, {}) as run:
        assert tracking.reattach_records(run, tracking.read_records()) == ["train@v"]
        assert tracking.reattach_records(run, tracking.read_records()) == []  # present now: not twice
        run.finish()
        tracking.finish_pipeline(run, pipeline)
    runs = _runs(repo)
    restored = runs["train@v"][-1]
    assert len(runs["parent"]) == 2 and len(runs["train@v"]) == 2
    new_parent = next(r for r in runs["parent"] if r.info.run_id == run.parent_run_id)
    tags = restored.data.tags
    assert tags["mlflow.parentRunId"] == new_parent.info.run_id != original["parent_run_id"]
    assert tags["vld.restored"] == "true" and tags["vld.original_run_id"] == original["run_id"]
    assert tags["vld.original_params_sha256"] == original["tags"]["vld.params_sha256"] != tags["vld.params_sha256"]
    assert tags["vld.pattern"] == "cycle" and restored.info.status == "FINISHED"
    assert restored.data.params == {"lr": "0.5"}
    client = _client(repo)
    history = client.get_metric_history(restored.info.run_id, "loss")
    assert sorted((m.step, m.value) for m in history) == [(1, 2.0), (2, 1.0)]  # the whole curve, copied
    assert restored.data.metrics["acc"] == 1.0
    assert [a.path for a in client.list_artifacts(restored.info.run_id)] == ["results"]
    assert new_parent.info.status == "FINISHED" and new_parent.data.tags["vld.pipeline_state"] == "complete"
    config = {a.path for a in client.list_artifacts(new_parent.info.run_id, "config")}
    assert config == {"config/params.yaml", "config/resolved_variants.json"}
    local = client.download_artifacts(new_parent.info.run_id, "config/resolved_variants.json", str(repo))
    assert json.loads(open(local).read()) == {"reasoning": {"v": {"lr": 0.5}}}


def test_a_null_run_replays_nothing():
    assert tracking.reattach_records(tracking.NullRun(), [{"stage_key": "a"}]) == []
    assert tracking.finish_pipeline(tracking.NullRun()) is None


@contextlib.contextmanager
def health_only_server():
    """An http server whose /health answers 200 and every other request 503 (a retried code);
    yields its URI and the list of API paths requested."""
    requests: list[str] = []

    class Handler(BaseHTTPRequestHandler):
        def _answer(self):
            if self.path.rstrip("/").endswith("/health"):
                self.send_response(200)
                self.end_headers()
                self.wfile.write(b"OK")
                return
            if self.path.startswith("/api/"):
                requests.append(self.path)
            self.send_response(503)
            self.end_headers()

        do_GET = do_POST = _answer

        def log_message(self, *args):
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}", requests
    finally:
        server.shutdown()
        server.server_close()


def _start_stage(pipeline) -> str:
    with pytest.raises(UserError) as err:
        with tracking.tracked(pipeline, "s", "v", {}, {}):
            pass
    return one_line(err)


def test_mlflow_http_retries_are_bounded_without_writing_the_environment(store, monkeypatch):
    repo, pipeline = store
    monkeypatch.delenv("MLFLOW_HTTP_REQUEST_MAX_RETRIES", raising=False)
    monkeypatch.delenv("MLFLOW_HTTP_REQUEST_TIMEOUT", raising=False)
    with health_only_server() as (uri, requests):
        monkeypatch.setenv("MLFLOW_TRACKING_URI", uri)
        environment = dict(os.environ)
        line = _start_stage(pipeline)
        assert line.startswith(f"MLFLOW_TRACKING_URI={uri}: the tracking store failed")
        assert len(requests) == 1 + HTTP_MAX_RETRIES  # MLflow's own default is 7 retries
        assert dict(os.environ) == environment
        requests.clear()
        monkeypatch.setenv("MLFLOW_HTTP_REQUEST_MAX_RETRIES", "0")  # a user's own setting wins
        _start_stage(pipeline)
        assert len(requests) == 1


def test_names_mlflow_refuses_are_logged_with_those_characters_replaced(tmp_path):
    # a claim row of a loop recipe's line is labelled "khop (inject=adapter)": the report logs
    # claims.claim_7.<label>.effect, which MLflow refuses as it is
    from mlflow.tracking import MlflowClient

    from vld.pipeline.tracking import runs

    client = MlflowClient(tracking_uri=f"sqlite:///{tmp_path / 'mlflow.db'}")
    run_id = client.create_run(client.create_experiment("names")).info.run_id
    metrics = {"claims.claim_7.khop (inject=adapter, residual_scale=visits).effect": -7.4,
               "claims.claim_2.khop.effect": 11.6, "curve/error_hop2": 0.5}
    runs.log_metric_entities(client, run_id, runs.metric_entities(runs.numeric(metrics)))
    runs.log_params(client, run_id, {"recipe{inject=adapter}": "x"})
    data = client.get_run(run_id).data
    allowed = set("abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789_-. :/")
    expected = {"".join(c if c in allowed else "_" for c in name): value for name, value in metrics.items()}
    assert data.metrics == expected
    assert expected == {"claims.claim_7.khop _inject_adapter_ residual_scale_visits_.effect": -7.4,
                        "claims.claim_2.khop.effect": 11.6, "curve/error_hop2": 0.5}
    assert data.params == {"recipe_inject_adapter_": "x"}


def test_keys_that_would_share_an_mlflow_name_are_logged_apart(tmp_path):
    # "a(b)" and "a_b_" both clean to "a_b_": the key that is its own name keeps it, the other is
    # told apart by its key's digest, whatever order the metrics came in
    import hashlib

    from mlflow.tracking import MlflowClient

    from vld.pipeline.tracking import runs

    def digest(key):
        return hashlib.sha256(key.encode()).hexdigest()[:8]

    metrics = {"x.a(b)": 1.0, "x.a_b_": 2.0, "x.a)b(": 3.0, "x.c=d": 4.0}
    expected = {f"x.a_b__{digest('x.a(b)')}": 1.0, "x.a_b_": 2.0, f"x.a_b__{digest('x.a)b(')}": 3.0, "x.c_d": 4.0}
    assert runs.numeric(metrics) == expected
    assert runs.numeric(dict(reversed(list(metrics.items())))) == expected
    long_a, long_b = "m" * 260 + "a", "m" * 260 + "b"  # equal up to the length limit
    long_names = runs.mlflow_names([long_a, long_b])
    assert long_names == {long_a: "m" * 241 + "_" + digest(long_a), long_b: "m" * 241 + "_" + digest(long_b)}

    client = MlflowClient(tracking_uri=f"sqlite:///{tmp_path / 'mlflow.db'}")
    run_id = client.create_run(client.create_experiment("names")).info.run_id
    runs.log_metric_entities(client, run_id, runs.metric_entities(runs.numeric(metrics)))
    runs.log_params(client, run_id, {long_a: "a", long_b: "b"})
    data = client.get_run(run_id).data
    assert data.metrics == expected
    assert data.params == {long_names[long_a]: "a", long_names[long_b]: "b"}
