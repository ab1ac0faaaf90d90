"""Secrets never written: credentials inside an `--llm` base URL (user:password@, a key in the query string)
given to `hnlm study` reach no executed notebook (papermill writes a notebook's parameters into it), result,
manifest, cache, timing report or log line; the notebooks get the redacted spec and the backend the full one
(tests/test_llm_http.py checks that the server still receives them)."""

import os
import subprocess
import sys

SECRETS = ("pw-s3cret", "key-s3cret")
SPEC = f"openai:tiny@http://alice:{SECRETS[0]}@127.0.0.1:9/v1?api_key={SECRETS[1]}"


def test_study_writes_no_credential_of_its_llm(tmp_path):
    env = {**os.environ, **{var: str(tmp_path / sub) for var, sub in (
        ("HNLM_ARTIFACTS", "artifacts"), ("HNLM_RUNS", "runs"), ("HNLM_FIGURES", "figures"),
        ("HNLM_RESULTS", "results"), ("HNLM_LLM_CACHE", "artifacts/llm_cache"),
        ("HNLM_ENCODER_CACHE", "artifacts/encoders"))}}
    done = subprocess.run([sys.executable, "-m", "hnlm", "study", "--profile", "smoke", "--notebooks", "01_data",
                           "--llm", SPEC, "--out-dir", str(tmp_path / "out")],
                          env=env, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stdout[-2000:] + done.stderr[-2000:]
    executed = tmp_path / "out" / "executed" / "01_data.ipynb"
    assert "openai:tiny@http://127.0.0.1:9/v1" in executed.read_text()    # the parameter, redacted
    written = [p for p in tmp_path.rglob("*") if p.is_file()]
    assert len(written) > 3, written
    for text, where in [(done.stdout, "stdout"), (done.stderr, "stderr")] + \
            [(p.read_bytes().decode("utf-8", "replace"), str(p)) for p in written]:
        assert not any(secret in text for secret in SECRETS), where
