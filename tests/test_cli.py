"""Command-line mistakes: each gets one clear line naming the problem and exit status 2, before any model loads."""

from __future__ import annotations

import pytest

from specviz.cli.main import main

BAD = {
    ("generate", "--device", "cuda"): "no CUDA GPU",
    ("generate", "--device", "foo"): "unknown device 'foo'",
    ("bench", "--limit", "-1"): "--limit must be 0",
    ("generate", "--threads", "-1"): "--threads must be between 1",
    ("bench", "--save", "/nonexistent/x.json"): "the folder /nonexistent does not exist",
    ("generate", "--gamma", "0"): "gamma must be between 1 and 32",
    ("generate", "--max-new-tokens", "-5"): "max_new_tokens must be between",
    ("generate", "--top-p", "nan"): "top_p must be in (0, 1]",
    ("generate", "--strategy", "nope"): "unknown strategy 'nope'",
    ("bench", "--strategies", "draft,nope"): "unknown strategy 'nope'",
    ("generate", "--preset", "nope"): "unknown preset 'nope'",
    ("generate", "--prompt", "   "): "the prompt is empty",
    ("generate", "--prompt", "a \udc80 b"): "lone surrogate",
    ("generate", "--option", "novalue"): "--option needs KEY=VALUE",
    ("lab", "batch", "--ms", "0,2"): "--ms: 0 is outside",
    ("lab", "relaxed", "--families", "linear,nope"): "--families: unknown 'nope'",
    ("lab", "relaxed", "--lams", "0,1.5"): "--lams: 1.5 is outside",
    ("lab", "replay", "--trace", "/nonexistent.json"): "could not read the trace",
    ("bench", "--targets", "speed"): "unknown target 'speed'",
}


@pytest.mark.parametrize("argv", list(BAD), ids=lambda a: " ".join(a).encode("ascii", "replace").decode())
def test_a_mistake_is_one_line_and_exit_2_before_anything_loads(argv, capsys, monkeypatch):
    def no_load(*a, **k):
        raise AssertionError("a model pair was loaded before the mistake was reported")

    monkeypatch.setattr("specviz.cli.common.load_pair", no_load)
    assert main([*argv, "--preset", "tiny-random"] if "--preset" not in argv else list(argv)) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("error: "), err
    assert BAD[argv] in err[0]
