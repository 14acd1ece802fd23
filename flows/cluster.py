"""Run the classify dataflow as N local processes (``-i/-a``), optionally with recovery."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
from pathlib import Path

from phoenix.config import PROJECT_ROOT, Settings


def free_ports(n: int) -> list[int]:
    socks = [socket.socket() for _ in range(n)]
    for s in socks:
        s.bind(("127.0.0.1", 0))
    ports = [s.getsockname()[1] for s in socks]
    for s in socks:
        s.close()
    return ports


def init_recovery(directory: Path, partitions: int = 1) -> None:
    """Create Bytewax recovery partitions once; later runs resume from them."""
    directory.mkdir(parents=True, exist_ok=True)
    if not any(directory.glob("part-*.sqlite3")):
        subprocess.run([sys.executable, "-m", "bytewax.recovery", str(directory), str(partitions)], check=True,
                       capture_output=True)


class DataflowCluster:
    """``python -m bytewax.run flows.classify`` × N, stopped with SIGINT on exit."""

    def __init__(self, settings: Settings, *, processes: int = 1, recovery: Path | None = None,
                 log_dir: Path | None = None, snapshot_s: int = 2) -> None:
        self.settings = settings
        self.processes = processes
        self.recovery = recovery
        self.log_dir = log_dir
        self.snapshot_s = snapshot_s
        self.procs: list[subprocess.Popen] = []

    def __enter__(self) -> DataflowCluster:
        cmd = [sys.executable, "-m", "bytewax.run", "flows.classify"]
        if self.recovery is not None:
            init_recovery(self.recovery)
            cmd += ["-r", str(self.recovery), "-s", str(self.snapshot_s), "-b", "60"]
        addrs = ";".join(f"127.0.0.1:{p}" for p in free_ports(self.processes)) if self.processes > 1 else None
        env = {**os.environ, **self.settings.to_env(), "PYTHONUNBUFFERED": "1"}
        for i in range(self.processes):
            extra = ["-i", str(i), "-a", addrs] if addrs else []
            out = open(self.log_dir / f"dataflow-{i}.log", "ab") if self.log_dir else subprocess.DEVNULL
            self.procs.append(subprocess.Popen(cmd + extra, cwd=PROJECT_ROOT, env=env, stdout=out,
                                               stderr=subprocess.STDOUT))
        return self

    def alive(self) -> bool:
        return all(p.poll() is None for p in self.procs)

    def __exit__(self, *exc) -> None:
        for p in self.procs:
            if p.poll() is None:
                p.send_signal(signal.SIGINT)
        for p in self.procs:
            try:
                p.wait(20)
            except subprocess.TimeoutExpired:
                p.kill()
