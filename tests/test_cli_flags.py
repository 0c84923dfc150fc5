"""The CLI's llama.cpp habits on the tiny synthetic GGUF: -m, -ngl, -f / -p -, --chat-template-file,
--jinja, --special, --version, serve's sampling defaults, subcommand usage on errors, -c / -t checks,
chat's /help, /reset and per-turn speed."""
from __future__ import annotations

import argparse
import io
import sys

import pytest

from kimi_runtime.cli import build_parser, main


def _run(capsys: pytest.CaptureFixture, argv: list[str]) -> tuple[int, str, str]:
    rc = main(argv)
    out = capsys.readouterr()
    return rc, out.out, out.err


def _args(argv: list[str]) -> argparse.Namespace:
    from kimi_runtime.commands.common import resolve_model

    args = build_parser().parse_args(argv)
    resolve_model(args)
    return args


GEN = ["-n", "4", "--seed", "7", "--temp", "0.9"]


def test_dash_m_is_the_positional_model(tiny_gguf: str, capsys: pytest.CaptureFixture) -> None:
    rc, out, _ = _run(capsys, ["run", tiny_gguf, "-p", "Hi", *GEN])
    rc2, out2, _ = _run(capsys, ["run", "-m", tiny_gguf, "-p", "Hi", *GEN])
    assert rc == rc2 == 0 and out == out2 and out.strip()
    rc, _, err = _run(capsys, ["run", "-m", tiny_gguf, "/elsewhere.gguf", "-p", "Hi"])
    assert rc == 2 and "usage: kimi-runtime run" in err and "two models given" in err
    rc, _, err = _run(capsys, ["run", "-p", "Hi"])
    assert rc == 2 and "usage: kimi-runtime run" in err and "no model given" in err


def test_prompt_from_file_and_stdin(tiny_gguf: str, capsys: pytest.CaptureFixture, tmp_path,
                                    monkeypatch: pytest.MonkeyPatch) -> None:
    _, ref, _ = _run(capsys, ["run", tiny_gguf, "-p", "Tell me a story", *GEN])
    f = tmp_path / "prompt.txt"
    f.write_text("Tell me a story", encoding="utf-8")
    rc, out, _ = _run(capsys, ["run", tiny_gguf, "-f", str(f), *GEN])
    assert rc == 0 and out == ref
    monkeypatch.setattr(sys, "stdin", io.StringIO("Tell me a story"))
    rc, out, _ = _run(capsys, ["run", tiny_gguf, "-p", "-", *GEN])
    assert rc == 0 and out == ref
    rc, _, err = _run(capsys, ["run", tiny_gguf, "-f", str(tmp_path / "nope.txt")])
    assert rc == 2 and "-f" in err and "cannot read" in err
    rc, _, err = _run(capsys, ["run", tiny_gguf])
    assert rc == 2 and "no prompt" in err and "usage: kimi-runtime run" in err


def test_ngl_warns_once_without_gpu_and_is_kept_for_the_engine(tiny_gguf: str,
                                                             capsys: pytest.CaptureFixture) -> None:
    from kimi_runtime import _native
    from kimi_runtime.commands.run import load_from_args

    rc, _, err = _run(capsys, ["run", tiny_gguf, "-ngl", "99", "-p", "x", "-n", "2"])
    assert rc == 0
    warnings = [l for l in err.splitlines() if "-ngl" in l]
    if _native.cuda_available():
        assert not warnings
    else:
        assert len(warnings) == 1 and warnings[0].startswith("warning: -ngl 99 ignored")
    gen = load_from_args(_args(["run", tiny_gguf, "--n-gpu-layers", "12", "-p", "x"]), io.StringIO())
    assert gen.engine.n_gpu_layers == 12


def test_chat_template_file_and_jinja(tiny_gguf: str, tmp_path, capsys: pytest.CaptureFixture) -> None:
    from kimi_runtime.commands.run import load_from_args

    t = tmp_path / "t.jinja"
    t.write_text("{% for m in messages %}<<{{ m.role }}:{{ m.content }}>>{% endfor %}", encoding="utf-8")
    gen = load_from_args(_args(["run", tiny_gguf, "--jinja", "--chat-template-file", str(t), "-p", "x"]),
                         io.StringIO())
    assert gen.template.name == "file"
    assert gen.template.render([{"role": "user", "content": "ok"}], add_generation_prompt=True) == "<<user:ok>>"
    rc, out, _ = _run(capsys, ["run", tiny_gguf, "--chat-template-file", str(t), "-p", "hi", "-n", "2"])
    assert rc == 0
    bad = tmp_path / "bad.jinja"
    bad.write_text("line one\n{% for m in messages %}\n", encoding="utf-8")
    rc, _, err = _run(capsys, ["run", tiny_gguf, "--chat-template-file", str(bad), "-p", "hi"])
    assert rc == 2 and "--chat-template-file" in err and "line" in err and "Traceback" not in err


def test_special_keeps_control_tokens(tiny_gguf: str) -> None:
    from kimi_runtime.commands.loading import load_generator

    plain = load_generator(tiny_gguf, io.StringIO())
    special = load_generator(tiny_gguf, io.StringIO(), special=True)
    tok = plain.tokenizer
    sid = next(i for i in range(tok.n_vocab) if tok.is_special(i) and tok.token_bytes(i))
    assert plain._decoder_factory(tok).push(sid) == ""
    assert special._decoder_factory(tok).push(sid) == tok.token_bytes(sid).decode("utf-8", "replace")


def test_version(capsys: pytest.CaptureFixture) -> None:
    from kimi_runtime import __version__

    rc, out, _ = _run(capsys, ["--version"])
    assert rc == 0 and out.strip() == f"kimi-runtime {__version__}"


@pytest.mark.parametrize("argv, usage, message", [
    (["run", "M", "-p", "x", "--bogus"], "usage: kimi-runtime run", "unrecognized arguments: --bogus"),
    (["chat", "M", "--nope", "1"], "usage: kimi-runtime chat", "unrecognized arguments: --nope 1"),
    (["run", "M", "-p", "x", "-t", "0"], "usage: kimi-runtime run", "-t/--threads: must be >= 1"),
    (["run", "M", "-p", "x", "-c", "0"], "usage: kimi-runtime run", "-c/--ctx-size: must be >= 1"),
    (["serve", "M", "-c", "-5"], "usage: kimi-runtime serve", "must be >= 1"),
    (["run", "M", "-p", "x", "-ngl", "gl"], "usage: kimi-runtime run", "-ngl/--n-gpu-layers/--gpu-layers: invalid int"),
])
def test_errors_show_the_subcommand_usage(argv, usage, message, capsys: pytest.CaptureFixture) -> None:
    rc, _, err = _run(capsys, argv)
    assert rc == 2 and usage in err and message in err
    assert "usage: kimi-runtime [-h]" not in err  # not the top-level usage


def test_n_predict_checked(tiny_gguf: str, capsys: pytest.CaptureFixture) -> None:
    rc, _, err = _run(capsys, ["run", tiny_gguf, "-p", "x", "-n", "0"])
    assert rc == 2 and "-n must be >= 1" in err
    rc, _, err = _run(capsys, ["run", tiny_gguf, "-p", "x", "-n", "-1", "-c", "24", "--raw", "--ignore-eos"])
    assert rc == 0 and "[length]" in err  # -1: until the context is full
    prompt = int(err.split("] prompt ")[1].split()[0])
    assert f"generated {24 - prompt} tok" in err


def test_ctx_checked_against_model_and_memory(tiny_gguf: str, capsys: pytest.CaptureFixture,
                                              monkeypatch: pytest.MonkeyPatch) -> None:
    from kimi_runtime.commands import common
    from kimi_runtime.gguf import open_gguf

    with open_gguf(tiny_gguf) as m:
        max_ctx = m.config.context_length
    rc, _, err = _run(capsys, ["run", tiny_gguf, "-p", "x", "-c", str(max_ctx + 1)])
    assert rc == 2 and f"exceeds this model's maximum context of {max_ctx:,}" in err
    assert "Traceback" not in err and len(err.strip().splitlines()) <= 3
    monkeypatch.setattr(common, "available_ram", lambda: 1 << 20)  # 1 MiB free
    rc, _, err = _run(capsys, ["run", tiny_gguf, "-p", "x", "-c", str(max_ctx)])
    assert rc == 2 and "the KV cache would take" in err and "of RAM is available" in err


def test_check_context_by_hand() -> None:
    from kimi_runtime.commands.common import UsageError, check_context
    from kimi_runtime.known_models import KNOWN_MODELS

    cfg = KNOWN_MODELS["kimi-k2"]
    n, kv = check_context(cfg, None, None)
    assert n == 4096 and kv == 61 * 4096 * 576 * 2  # f16 latent + rope key per layer (the default)
    assert check_context(cfg, None, None, "f32")[1] == 61 * 4096 * 576 * 4
    with pytest.raises(UsageError, match="maximum context of 131,072"):
        check_context(cfg, 100_000_000, None)
    with pytest.raises(UsageError, match=r"at most about 7,460 tokens fit"):
        check_context(cfg, 131072, 61 * 576 * 4 * 7460 + 5, "f32")
    with pytest.raises(UsageError, match=r"at most about 14,920 tokens fit"):
        check_context(cfg, 131072, 61 * 576 * 4 * 7460 + 5)


def test_serve_sampling_defaults_reach_the_app(tiny_gguf: str, capsys: pytest.CaptureFixture) -> None:
    from kimi_runtime.commands.serve import build_app

    args = _args(["serve", tiny_gguf, "--temp", "0.3", "--top-k", "5", "--min-p", "0.01", "--seed", "9",
                  "--repeat-penalty", "1.1", "--alias", "t"])
    seen = {}

    def factory(gen, name, api_key=None, queue_size=8, max_body=1, sampling_defaults=None):
        seen.update(name=name, defaults=sampling_defaults)
        return "app"

    assert build_app(args, object(), factory) == "app"
    assert seen == {"name": "t", "defaults": {"temperature": 0.3, "top_k": 5, "min_p": 0.01, "seed": 9,
                                              "repetition_penalty": 1.1}}
    err = io.StringIO()

    def old_factory(gen, name, api_key=None, queue_size=8, max_body=1):
        return "old"

    assert build_app(args, object(), old_factory, err) == "old"
    assert "takes no sampling defaults" in err.getvalue() and "temperature=0.3" in err.getvalue()


def test_chat_help_reset_and_turn_speed(tiny_gguf: str, capsys: pytest.CaptureFixture,
                                        monkeypatch: pytest.MonkeyPatch) -> None:
    script = "hello\n/stats\n/reset\n/stats\n/help\n/system be brief\nagain\n/quit\n"
    monkeypatch.setattr(sys, "stdin", io.StringIO(script))
    rc, out, err = _run(capsys, ["chat", tiny_gguf, "-n", "3", "--seed", "1"])
    assert rc == 0
    lines = err.splitlines()
    turn = [l for l in lines if l.startswith("[") and "tok/s" in l and " tok in " in l]
    assert len(turn) == 2  # one speed line per reply
    first = lines.index(next(l for l in lines if l.startswith("1 replies")))
    assert "history: 2 messages" in lines[first + 1:]
    after = lines[lines.index("(conversation and stats cleared)"):]
    assert "(nothing generated since the start or the last /reset)" in after
    assert "history: 0 messages" in after
    assert sum("/help (this list)" in l for l in lines) == 2  # the banner and /help
    assert "(system prompt set)" in lines and "unknown command" not in err


def test_inspect_and_info(tmp_path, capsys: pytest.CaptureFixture) -> None:
    import json

    from kimi_runtime import __version__

    rc, _, err = _run(capsys, ["inspect", str(tmp_path)])
    assert rc == 2 and "is a directory" in err and "mmap" not in err
    rc, out, _ = _run(capsys, ["info"])
    assert rc == 0 and json.loads(out)["version"] == __version__
