"""`kimi-runtime run / chat / serve / demo` end to end on the tiny synthetic GGUF: streamed output,
speed lines, seeded reproducibility, interactive commands, a served model stopped by SIGINT, the
demo's one-time model cache, and errors as one clear line."""
from __future__ import annotations

import io
import os
import signal
import socket
import subprocess
import sys
import time

import httpx
import pytest

from kimi_runtime.cli import main


def _run(capsys: pytest.CaptureFixture, argv: list[str]) -> tuple[int, str, str]:
    rc = main(argv)
    out = capsys.readouterr()
    return rc, out.out, out.err


def test_run_streams_and_reports_speed(tiny_gguf: str, capsys: pytest.CaptureFixture) -> None:
    argv = ["run", tiny_gguf, "-p", "Hello", "-n", "6", "--seed", "3", "--temp", "0.8"]
    rc, out, err = _run(capsys, argv)
    assert rc == 0
    assert "loading" in err and "tok/s" in err and "prompt" in err
    assert "generated 6 tok" in err or "[stop]" in err
    rc2, out2, _ = _run(capsys, argv)
    assert rc2 == 0 and out2 == out  # same seed, same text


def test_run_raw_greedy_verbose(tiny_gguf: str, capsys: pytest.CaptureFixture) -> None:
    rc, out, err = _run(capsys, ["--verbose", "run", tiny_gguf, "-p", "abc", "-n", "3", "--raw",
                                 "--preset", "greedy"])
    assert rc == 0 and "sampling" in err and "engine decode: " in err and "tok/s" in err
    assert "e+0" not in err and "inf" not in err  # readable units, not raw float dumps


def test_chat_commands(tiny_gguf: str, capsys: pytest.CaptureFixture,
                       monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(sys, "stdin", io.StringIO("hi there\n/stats\n/reset\n/bogus\nagain\n/quit\nnever\n"))
    rc, out, err = _run(capsys, ["chat", tiny_gguf, "-n", "3", "--seed", "1"])
    assert rc == 0
    assert "history: 2 messages" in err and "(conversation and stats cleared)" in err
    assert "unknown command /bogus" in err and "tok/s" in err


def test_errors_are_one_line(capsys: pytest.CaptureFixture, tmp_path) -> None:
    rc, _, err = _run(capsys, ["run", str(tmp_path / "missing.gguf"), "-p", "x"])
    assert rc == 2 and err.strip().splitlines()[-1].startswith("kimi-runtime run: error:")
    assert "Traceback" not in err
    bad = tmp_path / "bad.gguf"
    bad.write_bytes(b"GGUF" + b"\0" * 20)
    rc, _, err = _run(capsys, ["run", str(bad), "-p", "x"])
    assert rc == 2 and "Traceback" not in err


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_serve_answers_and_stops_on_sigint(tiny_gguf: str) -> None:
    port = _free_port()
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    proc = subprocess.Popen([sys.executable, "-m", "kimi_runtime", "serve", tiny_gguf, "--port", str(port),
                             "--alias", "tiny", "--api-key", "k"], env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    try:
        url = f"http://127.0.0.1:{port}"
        deadline = time.time() + 60
        while True:
            assert proc.poll() is None, proc.stdout.read()
            try:
                if httpx.get(url + "/health", timeout=1).status_code == 200:
                    break
            except httpx.TransportError:
                pass
            assert time.time() < deadline, "server did not come up"
            time.sleep(0.2)
        r = httpx.post(url + "/v1/chat/completions", headers={"Authorization": "Bearer k"},
                       json={"model": "tiny", "messages": [{"role": "user", "content": "hi"}],
                             "max_tokens": 3, "seed": 1})
        assert r.status_code == 200 and r.json()["usage"]["completion_tokens"] <= 3
        proc.send_signal(signal.SIGINT)
        assert proc.wait(30) == 0
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()


def test_demo_generates_once_then_reuses(tmp_path, capsys: pytest.CaptureFixture,
                                         monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("KIMI_RUNTIME_CACHE", str(tmp_path))
    rc, out, err = _run(capsys, ["demo", "--max-tokens", "4", "--preset", "tiny"])
    assert rc == 0, err
    assert "generating the 'tiny' synthetic model" in err and "gibberish" in err
    assert "expert cache:" in err and "tok/s" in err
    files = list((tmp_path / "synthetic").glob("tiny-*.gguf"))
    assert len(files) == 1 and not list((tmp_path / "synthetic").glob(".*part"))
    rc, out2, err2 = _run(capsys, ["demo", "--max-tokens", "4", "--preset", "tiny"])
    assert rc == 0 and "using the cached synthetic model" in err2
    assert out2 == out  # seeded weights and sampling: the same text
