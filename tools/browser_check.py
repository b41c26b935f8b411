"""Screenshots of what a user sees in a browser: MLflow's UI and DVC's plots page (not in CI).

    python tools/browser_check.py [--repo DIR] [--out DIR]

In a repository after `dvc repro` (its mlflow.db and results/report/), this starts `mlflow ui`
on the repository's sqlite store and serves `dvc plots show`'s page, both on 127.0.0.1 at free
ports, and takes headless-Chromium screenshots, offline (every request not to 127.0.0.1 goes to
a dead proxy):

    1_runs_table.png   the experiment's runs table, the pipeline's parent run expanded
    2_run_page.png     one training run's page (its parameters, metrics, datasets, models)
    3_compare.png      the compare view of every training run of the latest pipeline run
    4_plots.png        DVC's plots of the report's data (k-hop error, knowledge bits, loss)

The browser is driven over its DevTools pipe (it clicks the parent's expander). The servers and
the browser are stopped on every exit (each waited for at most STOP_S seconds, then killed).
Needs `chromium` (Debian: apt-get install chromium) and the project's venv on PATH (mlflow, dvc).
"""

from __future__ import annotations

import argparse
import base64
import functools
import json
import os
import shutil
import select
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
import urllib.parse
import urllib.request
from contextlib import ExitStack, contextmanager
from http.server import SimpleHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
START_S = 90  # mlflow ui's first start migrates the store
STOP_S = 10
SHOT_S = 60  # one browser command
RENDER_S = 30  # a page's wait for what it must show (MLflow's UI is a React app)
SETTLE_S = 3  # after that, for charts and late requests
# the runs table's expander of a parent run (MLflow 3's run name cell)
EXPANDER = "[data-component-id$='runnamecellrenderer.tsx_46']"
BROWSERS = ("chromium", "chromium-browser", "chromium-headless-shell", "google-chrome")


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@contextmanager
def mlflow_ui(store: Path, cwd: Path):
    """`mlflow ui` on the sqlite store `store`; yields its base URL."""
    port = free_port()
    log = tempfile.TemporaryFile()
    proc = subprocess.Popen(["mlflow", "ui", "--backend-store-uri", f"sqlite:///{store}",
                             "--host", "127.0.0.1", "--port", str(port)],
                            cwd=cwd, stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + START_S
        while True:
            try:
                with urllib.request.urlopen(f"{url}/health", timeout=2) as reply:
                    if reply.status == 200:
                        break
            except OSError:
                pass
            if proc.poll() is not None or time.monotonic() > deadline:
                log.seek(0)
                sys.exit(f"mlflow ui did not start within {START_S} s:\n{log.read().decode()[-2000:]}")
            time.sleep(0.5)
        yield url
    finally:
        stop(proc)
        log.close()


def stop(proc: subprocess.Popen) -> None:
    """SIGTERM to the server's process group (mlflow ui runs workers), SIGKILL if it lingers."""
    for sig in (signal.SIGTERM, signal.SIGKILL):
        try:
            os.killpg(proc.pid, sig)
        except ProcessLookupError:
            return
        try:
            proc.wait(STOP_S)
            return
        except subprocess.TimeoutExpired:
            continue


@contextmanager
def served(folder: Path):
    """A static HTTP server for `folder`; yields its base URL."""
    handler = functools.partial(QuietHandler, directory=str(folder))
    server = ThreadingHTTPServer(("127.0.0.1", free_port()), handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_port}"
    finally:
        server.shutdown()
        server.server_close()
        thread.join(STOP_S)


class QuietHandler(SimpleHTTPRequestHandler):
    def log_message(self, *args) -> None:
        pass


def api(url: str, endpoint: str, body: dict) -> dict:
    request = urllib.request.Request(f"{url}/api/2.0/mlflow/{endpoint}", data=json.dumps(body).encode(),
                                     headers={"Content-Type": "application/json"})
    with urllib.request.urlopen(request, timeout=30) as reply:
        return json.loads(reply.read())


def tags(run: dict) -> dict:
    return {t["key"]: t["value"] for t in run["data"].get("tags", [])}


def pipeline_runs(url: str) -> tuple[str, dict, list[dict]]:
    """The experiment holding the latest pipeline (parent) run, that run, and its children."""
    experiments = api(url, "experiments/search", {"max_results": 1000})["experiments"]
    ids = [e["experiment_id"] for e in experiments]
    runs = api(url, "runs/search", {"experiment_ids": ids, "max_results": 1000,
                                    "order_by": ["attributes.start_time DESC"]}).get("runs", [])
    parents = [r for r in runs if "mlflow.parentRunId" not in tags(r)]
    if not parents:
        sys.exit(f"{url}: no pipeline run in the store (run dvc repro first)")
    parent = parents[0]
    children = [r for r in runs if tags(r).get("mlflow.parentRunId") == parent["info"]["run_id"]]
    return parent["info"]["experiment_id"], parent, children


class Browser:
    """Headless Chromium driven over its DevTools pipe (--remote-debugging-pipe: JSON messages,
    NUL-terminated, on fds 3 and 4), so a page can be clicked before the screenshot."""

    def __init__(self, executable: str, profile: Path):
        to_browser, self._write = os.pipe()
        self._read, from_browser = os.pipe()
        args = [executable, "--headless", "--no-sandbox", "--disable-gpu", "--hide-scrollbars", "--no-first-run",
                f"--user-data-dir={profile}", "--proxy-server=http://127.0.0.1:9",  # offline: 127.0.0.1 bypasses it
                "--remote-debugging-pipe", "about:blank"]
        self.pid = os.posix_spawn(executable if os.path.isabs(executable) else shutil.which(executable), args, os.environ,
                                  file_actions=[(os.POSIX_SPAWN_DUP2, to_browser, 3), (os.POSIX_SPAWN_DUP2, from_browser, 4),
                                                (os.POSIX_SPAWN_OPEN, 1, os.devnull, os.O_WRONLY, 0),
                                                (os.POSIX_SPAWN_OPEN, 2, os.devnull, os.O_WRONLY, 0)],
                                  setsid=True)
        os.close(to_browser)
        os.close(from_browser)
        self._buffer, self._id = b"", 0
        try:
            page = next(t for t in self.call("Target.getTargets")["targetInfos"] if t["type"] == "page")
            self.session = self.call("Target.attachToTarget", targetId=page["targetId"], flatten=True)["sessionId"]
            self.call("Page.enable", session=True)
        except BaseException:
            self.close()
            raise

    def call(self, method: str, session: bool = False, **params) -> dict:
        self._id += 1
        message = {"id": self._id, "method": method, "params": params}
        if session:
            message["sessionId"] = self.session
        os.write(self._write, json.dumps(message).encode() + b"\0")
        deadline = time.monotonic() + SHOT_S
        while True:
            while b"\0" in self._buffer:
                raw, self._buffer = self._buffer.split(b"\0", 1)
                reply = json.loads(raw)
                if reply.get("id") == self._id:
                    if "error" in reply:
                        raise RuntimeError(f"{method}: {reply['error']}")
                    return reply["result"]
            left = deadline - time.monotonic()
            if left <= 0 or not select.select([self._read], [], [], left)[0]:
                raise TimeoutError(f"{method}: no answer from the browser in {SHOT_S} s")
            chunk = os.read(self._read, 1 << 20)
            if not chunk:
                raise RuntimeError(f"{method}: the browser exited")
            self._buffer += chunk

    def evaluate(self, expression: str):
        return self.call("Runtime.evaluate", session=True, expression=expression,
                         returnByValue=True)["result"].get("value")

    def shoot(self, url: str, png: Path, size: tuple[int, int], ready: str = "true", then: str = "") -> None:
        """Open `url`, wait until the JS expression `ready` holds (at most RENDER_S), run `then`,
        let the page settle, and save a screenshot."""
        self.call("Emulation.setDeviceMetricsOverride", session=True, width=size[0], height=size[1],
                  deviceScaleFactor=1, mobile=False)
        self.call("Page.navigate", session=True, url=url)
        deadline = time.monotonic() + RENDER_S
        while time.monotonic() < deadline and not self.evaluate(f"document.readyState === 'complete' && !!({ready})"):
            time.sleep(0.5)
        if then and not self.evaluate(then):
            print(f"  {png.name}: could not {then!r}", file=sys.stderr)
        time.sleep(SETTLE_S)
        png.write_bytes(base64.b64decode(self.call("Page.captureScreenshot", session=True, format="png")["data"]))
        print(f"{png} ({png.stat().st_size} bytes): {url}")

    def close(self) -> None:
        try:
            os.killpg(self.pid, signal.SIGTERM)
            deadline = time.monotonic() + STOP_S
            while os.waitpid(self.pid, os.WNOHANG) == (0, 0):
                if time.monotonic() > deadline:
                    os.killpg(self.pid, signal.SIGKILL)
                    os.waitpid(self.pid, 0)
                    break
                time.sleep(0.2)
        except (ProcessLookupError, ChildProcessError):
            pass
        os.close(self._write)
        os.close(self._read)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repo", type=Path, default=Path.cwd(), help="repository after dvc repro (default: .)")
    parser.add_argument("--out", type=Path, default=Path("bench/out/browser"), help="where the PNGs go")
    args = parser.parse_args(argv)
    repo, out = args.repo.resolve(), args.out.resolve()
    executable = next((b for b in BROWSERS if shutil.which(b)), None)
    if executable is None:
        sys.exit(f"no headless browser on PATH (one of {', '.join(BROWSERS)}; Debian: apt-get install chromium)")
    for tool in ("mlflow", "dvc"):
        if shutil.which(tool) is None:
            sys.exit(f"{tool}: not on PATH (put the project's .venv/bin first)")
    if not (repo / "mlflow.db").is_file():
        sys.exit(f"{repo / 'mlflow.db'}: no MLflow store (run dvc repro in that repository first)")
    out.mkdir(parents=True, exist_ok=True)

    with ExitStack() as stack:
        scratch = Path(stack.enter_context(tempfile.TemporaryDirectory(prefix="browser_check_")))
        # the repository's own plot page settings (.dvc/config), else this project's offline page
        config = repo / ".dvc/config"
        page = ([] if config.is_file() and "html_template" in config.read_text(errors="replace")
                else ["--html-template", str(ROOT / "conf/plots/offline.html")])
        shown = subprocess.run(["dvc", "plots", "show", "-o", str(scratch / "plots"), *page], cwd=repo,
                               capture_output=True, text=True, timeout=300, env={**os.environ, "DVC_NO_ANALYTICS": "1"})
        if shown.returncode != 0:
            sys.exit(f"dvc plots show failed in {repo}:\n{shown.stderr[-2000:]}")
        plots = stack.enter_context(served(scratch / "plots"))
        ui = stack.enter_context(mlflow_ui(repo / "mlflow.db", repo))
        experiment, parent, children = pipeline_runs(ui)
        training = sorted((r for r in children if tags(r).get("vld.stage", "").startswith(("pretrain", "retrofit"))),
                          key=lambda r: r["info"]["run_name"]) or children
        one = training[0]["info"]["run_id"] if training else parent["info"]["run_id"]
        compare = [r["info"]["run_id"] for r in training] or [parent["info"]["run_id"]]
        query = urllib.parse.urlencode({"runs": json.dumps(compare), "experiments": json.dumps([experiment])})
        browser = Browser(executable, scratch / "profile")
        stack.callback(browser.close)
        browser.shoot(f"{ui}/#/experiments/{experiment}/runs", out / "1_runs_table.png", (2000, 1100),
                      ready=f"document.querySelector(\"{EXPANDER}\")",
                      then=f"(b => b && (b.click(), true))(document.querySelector(\"{EXPANDER}\"))")
        browser.shoot(f"{ui}/#/experiments/{experiment}/runs/{one}", out / "2_run_page.png", (1600, 1400),
                      ready="document.body.innerText.includes('Metrics')")
        browser.shoot(f"{ui}/#/compare-runs?{query}", out / "3_compare.png", (1600, 2400),
                      ready="document.body.innerText.includes('Run details')")
        browser.shoot(f"{plots}/index.html", out / "4_plots.png", (1200, 2200),
                      ready="document.querySelectorAll('canvas, svg.marks').length >= 1")
    return 0


if __name__ == "__main__":
    sys.exit(main())
