"""The LLM knowledge-graph client against a local OpenAI-compatible server that serves recorded replies."""
import http.server
import json
import pathlib
import threading

import pytest

from pclip_jax.graph import generate
from pclip_jax.graph.schema import load_kg

DATA = pathlib.Path(__file__).parent / "data"


class _Server:
    """A chat-completions endpoint in a thread: answers each POST with the next recorded reply."""

    def __init__(self, replies):
        self.replies, self.requests = list(replies), []
        outer = self

        class Handler(http.server.BaseHTTPRequestHandler):
            def do_POST(self):
                body = self.rfile.read(int(self.headers["Content-Length"]))
                outer.requests.append((self.path, dict(self.headers), json.loads(body)))
                status, payload = outer.replies.pop(0)
                data = payload.encode() if isinstance(payload, str) else json.dumps(payload).encode()
                self.send_response(status)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)

            def log_message(self, *args):
                pass

        self.httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.thread = threading.Thread(target=self.httpd.serve_forever, daemon=True)

    @property
    def url(self):
        return f"http://127.0.0.1:{self.httpd.server_address[1]}/v1"

    def __enter__(self):
        self.thread.start()
        return self

    def __exit__(self, *exc):
        self.httpd.shutdown()
        self.httpd.server_close()


def _recorded(name):
    return json.loads((DATA / name).read_text())


def test_valid_reply_is_validated_and_written(tmp_path, monkeypatch, capsys):
    monkeypatch.setenv("PCLIP_TEST_KEY", "sk-test")
    out = tmp_path / "kg.yaml"
    with _Server([(200, _recorded("llm_reply_kg_valid.json"))]) as srv:
        rc = generate.main(["--mission", "find VPN tunnels and remote access", "--endpoint", srv.url,
                            "--model", "recorded-model", "--out", str(out), "--api-key-env", "PCLIP_TEST_KEY"])
    assert rc == 0
    path, headers, body = srv.requests[0]
    assert path == "/v1/chat/completions"
    assert headers["Authorization"] == "Bearer sk-test"
    assert body["model"] == "recorded-model"
    assert "find VPN tunnels and remote access" in body["messages"][-1]["content"]
    kg = load_kg(out)
    assert kg.level_ids(1) == ["VPN/Tunnel", "RemoteAccess", "Other"]
    assert kg.children("RemoteAccess") == ["RDP", "SSH"]
    assert "3 classes, 4 applications" in capsys.readouterr().out
    assert ("VPN/Tunnel", "RemoteAccess") in kg.related


def test_invalid_reply_is_rejected_with_the_reason(tmp_path, capsys):
    out = tmp_path / "kg.yaml"
    with _Server([(200, _recorded("llm_reply_kg_invalid.json"))]) as srv:
        rc = generate.main(["--mission", "find VPN tunnels", "--endpoint", srv.url + "/chat/completions",
                            "--model", "m", "--out", str(out)])
    assert rc == 1 and not out.exists()
    err = capsys.readouterr().err
    assert "rejected" in err and "node 'OpenVPN'" in err and "parent 'Tunnels' does not exist" in err


def test_retry_quotes_the_reason_and_accepts_the_fix():
    with _Server([(200, _recorded("llm_reply_kg_invalid.json")),
                  (200, _recorded("llm_reply_kg_valid.json"))]) as srv:
        kg = generate.generate_kg("find VPN tunnels", srv.url, "m", attempts=2)
    assert kg.name == "vpn_remote_access"
    second = srv.requests[1][2]["messages"]
    assert "parent 'Tunnels' does not exist" in second[-1]["content"]


def test_http_errors_and_garbage_are_clear():
    with _Server([(500, '{"error": "model overloaded"}'), (200, "not json")]) as srv:
        with pytest.raises(generate.GenerationError, match=r"HTTP 500.*model overloaded"):
            generate.generate_kg("x", srv.url, "m")
        with pytest.raises(generate.GenerationError, match="not a chat-completions response"):
            generate.generate_kg("x", srv.url, "m")
    with pytest.raises(generate.GenerationError, match="cannot reach the endpoint"):
        generate.call_chat("http://127.0.0.1:9/v1", "m", [], timeout=2)
