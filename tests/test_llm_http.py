"""The OpenAI-compatible backend against a local HTTP server that speaks the chat-completions wire format
(like llama.cpp's server: it rejects `json_schema` response formats with HTTP 500 and accepts
`{"type": "json_object", "schema": ...}`), including errors, garbage envelopes and invalid answers."""

import json
import os
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest

from hnlm.errors import UserFacingError
from hnlm.llm.backends import BackendUnavailable, OpenAIBackend, make_backend

SCHEMA = {"type": "object",
          "properties": {"summarization": {"type": "string", "x-max-tokens": 30},
                         "reasoning": {"type": "string"}},
          "required": ["summarization", "reasoning"], "additionalProperties": False}


class Server:
    """Answers each POST from `faults` (a list of callables, consumed first) or like llama.cpp."""

    def __init__(self):
        self.requests, self.faults = [], []
        self.lock = threading.Lock()
        outer = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *a):
                pass

            def do_POST(self):
                body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
                with outer.lock:
                    outer.requests.append({"path": self.path, "body": body, "auth": self.headers.get("Authorization")})
                    fault = outer.faults.pop(0) if outer.faults else None
                status, payload = fault(body) if fault else outer.answer(body)
                data = payload if isinstance(payload, bytes) else json.dumps(payload).encode()
                self.send_response(status)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)

        self.httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.httpd.server_address[1]}/v1"
        threading.Thread(target=self.httpd.serve_forever, daemon=True).start()

    def answer(self, body):
        if body["response_format"]["type"] == "json_schema":
            return 500, {"error": {"message": "json_schema not supported"}}
        question = body["messages"][-1]["content"]
        # Raw control character inside a string, as llama.cpp sometimes emits.
        content = '{"summarization": "about ' + question + '\t", "reasoning": "asked"}'
        return 200, {"choices": [{"message": {"role": "assistant", "content": content},
                                  "finish_reason": "stop"}],
                     "usage": {"prompt_tokens": 7, "completion_tokens": 12}}

    def close(self):
        if self.httpd.socket.fileno() != -1:
            self.httpd.shutdown()
            self.httpd.server_close()  # the port now refuses connections


@pytest.fixture
def server():
    s = Server()
    yield s
    s.close()


def msgs(*questions):
    return [[{"role": "user", "content": q}] for q in questions]


def backend(server, tmp_path, **kw):
    kw.setdefault("backoff", 0.01)
    return make_backend(f"openai:tiny@{server.url}", cache_path=tmp_path / "c.jsonl", progress=False, **kw)


def test_json_object_fallback_cache_and_key(server, tmp_path, monkeypatch):
    monkeypatch.setenv("HNLM_OPENAI_API_KEY", "sk-test")
    b = backend(server, tmp_path, concurrency=2)
    assert isinstance(b, OpenAIBackend) and b.identity == f"openai:tiny@{server.url}"
    res = b.generate_json(msgs("q1", "q2", "q3"), SCHEMA, max_new_tokens=64)
    assert all(r.ok and not r.cached for r in res)
    assert [r.value["summarization"].strip() for r in res] == ["about q1", "about q2", "about q3"]
    assert b.mode == "json_object"
    sent = server.requests[-1]
    assert sent["path"] == "/v1/chat/completions" and sent["auth"] == "Bearer sk-test"
    assert sent["body"]["response_format"]["schema"]["required"] == ["summarization", "reasoning"]
    assert "x-max-tokens" not in json.dumps(sent["body"])  # our extensions stay local
    assert b.last_stats["tokens_out"] == 36
    n = len(server.requests)
    again = backend(server, tmp_path).generate_json(msgs("q1", "q2", "q3"), SCHEMA, max_new_tokens=64)
    assert all(r.cached for r in again) and len(server.requests) == n  # a rerun costs nothing


def test_retries_429_and_5xx_then_succeeds(server, tmp_path):
    server.faults = [lambda b: (429, {"error": "slow down"}), lambda b: (503, b"<html>busy</html>"),
                     lambda b: (200, b"not json at all")]
    b = backend(server, tmp_path)
    b.mode = "json_object"
    res = b.generate_json(msgs("q"), SCHEMA)
    assert res[0].ok and b.retries == 3


def test_invalid_answers_are_recorded_failures_not_replaced(server, tmp_path):
    bad = [lambda b: (200, {"choices": [{"message": {"content": "I think it is a nice film."},
                                         "finish_reason": "stop"}]}),
           lambda b: (200, {"choices": [{"message": {"content": '{"summarization": "cut'},
                                         "finish_reason": "length"}]})]
    server.faults = list(bad)
    b = backend(server, tmp_path, concurrency=1)
    b.mode = "json_object"
    res = b.generate_json(msgs("a", "b"), SCHEMA)
    assert [r.ok for r in res] == [False, False]
    assert {r.raw for r in res} == {"I think it is a nice film.", '{"summarization": "cut'}
    reasons = " | ".join(r.reason for r in res)
    assert "finish_reason=length" in reasons and b.last_stats["failed"] == 2
    # json-repair closes the truncated object, but it then lacks "reasoning": the schema rejects it.
    assert "schema" in reasons


def test_server_down_gives_clear_error_and_keeps_cache(server, tmp_path):
    b = backend(server, tmp_path, concurrency=1, max_retries=2)
    assert b.generate_json(msgs("kept"), SCHEMA)[0].ok
    server.faults = [lambda b: (500, b"garbage")] * 10
    with pytest.raises(BackendUnavailable, match="after 2 retries.*HTTP 500"):
        b.generate_json(msgs("new"), SCHEMA)
    server.close()
    dead = backend(server, tmp_path, max_retries=1, timeout=5)
    with pytest.raises(BackendUnavailable, match="ConnectError"):
        dead.generate_json(msgs("other"), SCHEMA)
    assert dead.generate_json(msgs("kept"), SCHEMA)[0].cached  # what was done is still there


def test_auth_error_is_not_retried(server, tmp_path):
    server.faults = [lambda b: (401, {"error": "bad key"})]
    b = backend(server, tmp_path)
    b.mode = "json_object"
    with pytest.raises(UserFacingError, match="HTTP 401"):
        b.generate_json(msgs("q"), SCHEMA)
    assert b.retries == 0


def test_bad_specs():
    with pytest.raises(UserFacingError, match="openai:<model>@<base_url>"):
        make_backend("openai:nourl")
    with pytest.raises(UserFacingError, match="unknown LLM"):
        make_backend("no-such-model")


def test_secrets_reach_no_cache_key_file_name_or_message(server, tmp_path, monkeypatch, capsys):
    """An API key, or credentials inside the base URL, are sent to the server and written nowhere: not in the
    identity that keys the cache, the cache file or its name, a folder name, nor an error message."""
    from hnlm.cli import main
    from hnlm.semantic.common import safe_name
    monkeypatch.setenv("HNLM_OPENAI_API_KEY", "sk-s3cret-key")
    spec = f"openai:tiny@{server.url.replace('://', '://bob:pa55word@')}"
    b = make_backend(spec, cache_path=tmp_path / "c.jsonl", progress=False, backoff=0.01)
    assert b.generate_json(msgs("q1"), SCHEMA, max_new_tokens=64)[0].ok
    assert server.requests[-1]["auth"].startswith("Basic ")     # the URL's credentials still reach the server
    written = [b.identity, safe_name(spec), (tmp_path / "c.jsonl").read_text(), str(b.cache.path)]
    server.close()
    with pytest.raises(BackendUnavailable) as err:
        make_backend(spec, cache_path=tmp_path / "c.jsonl", progress=False, backoff=0.01,
                     max_retries=1).generate_json(msgs("q2"), SCHEMA)
    assert main(["profiles", "--llm", spec, "--dataset", "no-such-dataset"]) == 2
    written += [str(err.value), capsys.readouterr().err]
    for text in written:
        assert "pa55word" not in text and "s3cret" not in text, text


def test_study_notebooks_get_a_redacted_spec_and_the_backend_the_credentials(server, tmp_path, monkeypatch):
    """`hnlm study` passes its notebooks the spec without credentials (papermill writes parameters into the
    executed notebook); make_backend, in the kernel, gets them back from the environment the kernel inherits."""
    from hnlm.llm.catalog import SPEC_VAR
    from hnlm.study.runner import notebook_llm
    monkeypatch.delenv(SPEC_VAR, raising=False)     # restored after the test: notebook_llm sets it
    spec = f"openai:tiny@{server.url.replace('://', '://bob:pa55word@')}"
    public = notebook_llm(spec)
    assert public == f"openai:tiny@{server.url}" and "pa55word" in os.environ[SPEC_VAR]
    b = make_backend(public, cache_path=tmp_path / "c.jsonl", progress=False, backoff=0.01)
    assert b.generate_json(msgs("q1"), SCHEMA, max_new_tokens=64)[0].ok
    assert server.requests[-1]["auth"].startswith("Basic ")     # the credentials reached the server
    assert "pa55word" not in b.identity + (tmp_path / "c.jsonl").read_text()
    assert make_backend(f"openai:other@{server.url}", progress=False).base_url == server.url   # another spec: as is
