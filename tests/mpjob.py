"""Run a job of `tests/mp_worker.py` processes, each under `timeout`, and collect its results."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

from servers import free_port

WORKER = Path(__file__).with_name("mp_worker.py")


@dataclass
class Job:
    returncodes: list[int]
    outputs: list[str]
    results: list[dict[str, object]]
    wall: float

    def result(self, process: int, key: str) -> object:
        for fields in self.results:
            if fields["process"] == process and key in fields:
                return fields[key]
        raise AssertionError(f"process {process} printed no {key!r}:\n{self.outputs[process]}")


def run_job(
    mode: str,
    ckpt: Path | str,
    out: Path,
    *,
    processes: int,
    local_devices: int,
    limit: int = 120,
    env: dict[str, str] | None = None,
) -> Job:
    """Run `processes` workers (each under `timeout`) and wait for all of them."""
    env = {
        **os.environ,
        **(env or {}),
        "XLA_FLAGS": f"--xla_force_host_platform_device_count={local_devices}",
        "JAX_PLATFORMS": "cpu",
        "PYTHONUNBUFFERED": "1",
    }
    port = free_port() if processes > 1 else 0
    started = time.perf_counter()
    procs = [
        subprocess.Popen(
            [
                *("timeout", "-k", "5", str(limit), sys.executable, str(WORKER), mode, str(ckpt)),
                *(str(out), str(pid), str(processes), str(port)),
            ],
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
            env=env,
        )
        for pid in range(processes)
    ]
    outputs = [proc.communicate(timeout=limit + 30)[0] for proc in procs]
    wall = time.perf_counter() - started
    results = [
        json.loads(line[len("RESULT ") :])
        for output in outputs
        for line in output.splitlines()
        if line.startswith("RESULT ")
    ]
    return Job([proc.returncode for proc in procs], outputs, results, wall)


def check_ok(job: Job) -> None:
    for pid, (code, output) in enumerate(zip(job.returncodes, job.outputs, strict=True)):
        assert code == 0, f"process {pid} exited with {code}:\n{output[-6000:]}"
