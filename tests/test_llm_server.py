"""`hnlm profiles` against a REAL OpenAI-compatible server: `transformers serve` on a loopback port, serving the
packaged SmolLM2-135M (its cached safetensors copy) offline in a subprocess.

`transformers serve` ignores `response_format` (it logs "Ignoring unsupported fields"), so replies are free
text: the backend's lenient path (outermost {...}, json-repair, schema + word-cap validation) decides what
counts, and every reply that fails is recorded and counted as failed, never passed off as a profile.
The server is killed between runs to check that a run with the server down stops with a clear error and that
the rerun after a restart generates only the missing profile. Each server is stopped by the fixture's
finalizer whatever happens (terminate, then kill after a bounded wait)."""

import json
import os
import signal
import socket
import subprocess
import sys
import time

import httpx
import pandas as pd
import pytest

from hnlm.cli import main
from hnlm.llm.models import converted_folder
from hnlm.llm.structured import extract_json_text, parse_and_validate
from hnlm.semantic import profiles as pf

pytestmark = pytest.mark.server

HOST = "127.0.0.1"  # loopback only
START_TIMEOUT_S = 300  # model load on a busy 2-core machine
STOP_TIMEOUT_S = 15
TOKENS = ["--summary-tokens", "1", "--reasoning-tokens", "1"]  # shortest answers: generation dominates


def free_port() -> int:
    with socket.socket() as s:
        s.bind((HOST, 0))
        return s.getsockname()[1]


class TransformersServer:
    """`transformers serve <folder>` in its own process group on a fixed loopback port (restartable)."""

    def __init__(self, folder, port: int, log_path):
        self.folder, self.port, self.log_path = str(folder), port, log_path
        self.proc: subprocess.Popen | None = None

    @property
    def url(self) -> str:
        return f"http://{HOST}:{self.port}/v1"

    def start(self):
        cmd = [sys.executable, "-m", "transformers.cli.transformers", "serve", self.folder, "--host", HOST,
               "--port", str(self.port), "--device", "cpu", "--dtype", "float32", "--log-level", "warning"]
        env = dict(os.environ, HF_HUB_OFFLINE="1", TRANSFORMERS_OFFLINE="1")
        with open(self.log_path, "ab") as log:
            self.proc = subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT, env=env,
                                         start_new_session=True)
        deadline = time.monotonic() + START_TIMEOUT_S
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                pytest.fail(f"transformers serve exited with {self.proc.returncode}:\n{self.log_tail()}")
            try:
                if httpx.get(f"http://{HOST}:{self.port}/health", timeout=2).status_code == 200:
                    return  # the forced model is loaded before the server listens
            except httpx.TransportError:
                pass
            time.sleep(0.5)
        self.stop()
        pytest.fail(f"transformers serve not ready after {START_TIMEOUT_S}s:\n{self.log_tail()}")

    def stop(self):
        if self.proc is None or self.proc.poll() is not None:
            return
        os.killpg(self.proc.pid, signal.SIGTERM)
        try:
            self.proc.wait(STOP_TIMEOUT_S)
        except subprocess.TimeoutExpired:
            os.killpg(self.proc.pid, signal.SIGKILL)
            self.proc.wait(STOP_TIMEOUT_S)

    def log_tail(self, n: int = 3000) -> str:
        return self.log_path.read_text(errors="replace")[-n:]


@pytest.fixture
def server(tmp_path):
    srv = TransformersServer(converted_folder("smollm2-135m"), free_port(), tmp_path / "serve.log")
    try:
        yield srv
    finally:
        srv.stop()


def profiles(llm: str, limit: int, out) -> tuple[int, dict]:
    rc = main(["profiles", "--dataset", "ml-100k", "--llm", llm, "--limit", str(limit), "--kind", "item",
               *TOKENS, "--json", str(out)])
    return rc, (json.loads(out.read_text())["counts"][0] if rc == 0 else {})


def test_profiles_against_transformers_serve(server, tmp_path, monkeypatch, capsys):
    monkeypatch.setenv("HNLM_ARTIFACTS", str(tmp_path / "artifacts"))
    monkeypatch.setenv("HNLM_LLM_CACHE", str(tmp_path / "llm_cache"))
    llm = f"openai:{server.folder}@{server.url}"
    started = time.monotonic()
    server.start()

    rc, first = profiles(llm, 1, tmp_path / "c1.json")
    assert rc == 0 and first["requested"] == 1 and first["generated"] == 1

    server.stop()  # killed between runs: the next run cannot reach it
    capsys.readouterr()
    rc, _ = profiles(llm, 2, tmp_path / "c2.json")
    assert rc == 2 and "failed after" in capsys.readouterr().err

    server.start()  # same port, so the same backend identity and cache keys
    rc, resumed = profiles(llm, 2, tmp_path / "c3.json")
    assert rc == 0 and resumed["generated"] == 1 and resumed["cached"] == 1  # only the missing one

    server.stop()
    rc, again = profiles(llm, 2, tmp_path / "c4.json")  # fully cached: the dead server is never asked
    assert rc == 0 and again["generated"] == 0 and again["cached"] == 2
    seconds = time.monotonic() - started

    frame = pd.read_json(pf.profiles_path("ml-100k", llm, "item", "0"), lines=True)
    assert frame["id"].tolist() == [0, 1]
    assert again["failed"] == int((~frame["ok"]).sum())
    # Nothing passes unchecked: each cached record's verdict is the validator's verdict on the raw reply.
    schema = pf.profile_schema(1, 1)
    records = [json.loads(line) for line in next((tmp_path / "llm_cache").rglob("*.jsonl")).read_text().splitlines()]
    assert len(records) == 2
    for rec in records:
        value, reason = parse_and_validate(extract_json_text(rec["raw"]), schema, repair=True)
        assert rec["ok"] == (value is not None) and rec["value"] == value
        assert rec["raw"].strip() and (rec["ok"] or rec["reason"])  # the server answered; a failure says why
    ok = int(frame["ok"].sum())
    print(f"transformers serve: {ok}/2 valid profiles, test body {seconds:.0f}s")
