"""Real deployment on localhost: ``flower-superlink`` + one ``flower-supernode`` per organisation
(each pointed at its own file through ``--node-config data-path=...``), a 2-round run submitted
with ``flwr run``. Unique ports, a private FLWR_HOME, every process killed by pid afterwards.

The app is submitted from a temporary copy (``fl/``, ``phoenix/`` and a pyproject whose
``[tool.flwr.app.config]`` holds the keys this test overrides), so the test does not depend on
the project's own run-config defaults.
"""

from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
import time
from pathlib import Path

import pytest

from phoenix.config import PROJECT_ROOT

NF = PROJECT_ROOT.parent / "shared" / "data" / "nf"
ORGS = {"bot": "NF-BoT-IoT-v2.parquet", "cse": "NF-CSE-CIC-IDS2018-v2.parquet"}

APP_TOML = """
[build-system]
requires = ["setuptools>=68"]
build-backend = "setuptools.build_meta"

[project]
name = "phoenixfl-deployment-test"
version = "0.1.0"
license = "Apache-2.0"
dependencies = []

[tool.flwr.app]
publisher = "phoenixfl"

[tool.flwr.app.components]
serverapp = "fl.server_app:app"
clientapp = "fl.client_app:app"

[tool.flwr.app.config]
num-server-rounds = 2
local-epochs = 1
strategy = "fedavg"
data-dir = "{data}"
orgs = "{orgs}"
max-rows = 1000
out = "{out}"
results = ""
"""


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _wait_port(port: int, proc: subprocess.Popen, timeout: float = 60) -> None:
    deadline = time.time() + timeout
    while time.time() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"process exited early with {proc.returncode}")
        with socket.socket() as s:
            if s.connect_ex(("127.0.0.1", port)) == 0:
                return
        time.sleep(0.3)
    raise TimeoutError(f"port {port} not listening after {timeout}s")


@pytest.mark.timeout(300)
def test_superlink_and_supernodes_two_rounds(tmp_path: Path) -> None:
    home, app, out = tmp_path / "flwr-home", tmp_path / "app", tmp_path / "deployed.pt"
    home.mkdir()
    link_port = _free_port()
    (home / "config.toml").write_text(
        f'[superlink]\ndefault = "deploy"\n\n[superlink.deploy]\naddress = "127.0.0.1:{link_port}"\ninsecure = true\n')
    ignore = shutil.ignore_patterns("__pycache__", "*.pyc")
    for pkg in ("fl", "phoenix"):
        shutil.copytree(PROJECT_ROOT / pkg, app / pkg, ignore=ignore)
    (app / "pyproject.toml").write_text(APP_TOML.format(data=NF, orgs=",".join(ORGS), out=out))
    env = {**os.environ, "FLWR_HOME": str(home), "PYTHONPATH": str(app), "PYTHONUNBUFFERED": "1"}
    procs: list[subprocess.Popen] = []
    logs = []

    def start(name: str, cmd: list[str]) -> subprocess.Popen:
        log = open(tmp_path / f"{name}.log", "wb")
        logs.append(log)
        # Own session: the SuperLink/SuperNode children (SuperExec, app processes) go with it.
        p = subprocess.Popen(cmd, cwd=tmp_path, env=env, stdout=log, stderr=subprocess.STDOUT,
                             start_new_session=True)
        procs.append(p)
        return p

    try:
        link = start("superlink", ["flower-superlink", "--insecure", "--host", "127.0.0.1", "--port", str(link_port)])
        _wait_port(link_port, link)
        for org, file in ORGS.items():
            start(f"supernode-{org}", ["flower-supernode", "--insecure", "--superlink", f"127.0.0.1:{link_port}",
                                       "--port", str(_free_port()), "--node-config", f"data-path='{NF / file}'"])
        run = subprocess.run(["flwr", "run", str(app), "deploy", "--stream"], cwd=app, env=env,
                             capture_output=True, text=True, timeout=240)
        output = run.stdout + run.stderr
        assert run.returncode == 0, output[-3000:]
        assert "round 2/2" in output, output[-3000:]
        assert out.exists(), output[-3000:]
        from fl.model import load_artifact

        art = load_artifact(out)
        assert art.provenance["rounds"] == 2
        assert {d["org"] for d in art.provenance["data"]} == set(ORGS)
    finally:
        for p in reversed(procs):
            if p.poll() is None:
                try:
                    os.killpg(p.pid, signal.SIGTERM)
                except ProcessLookupError:
                    pass
        for p in procs:
            try:
                p.wait(10)
            except subprocess.TimeoutExpired:
                os.killpg(p.pid, signal.SIGKILL)
                p.wait(5)
            try:
                os.killpg(p.pid, signal.SIGKILL)  # stragglers of the group (app processes)
            except ProcessLookupError:
                pass
        for log in logs:
            log.close()
