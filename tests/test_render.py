"""The HTML renderers and tables: every token class gets its style, text is escaped, whitespace stays faithful, tooltips
carry the numbers, the theory card matches hand-computed values; and the import rules of the UI layer."""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

import pytest
from helpers import step, summary, tok

from specviz.core.events import StepEvent
from specviz.core.metrics import with_plain
from specviz.core.theory import per_token_alpha, theory_numbers, why
from specviz.ui import render, tables
from specviz.ui.step_panel import render_step_panel

ROOT = Path(__file__).resolve().parent.parent


@pytest.fixture
def steps() -> list[StepEvent]:
    """Three steps covering every token class, with HTML-hostile text and whitespace."""
    s0 = step(
        0,
        [
            tok("<script>alert(1)</script>", "accepted", 0),
            tok("a & b", "accepted", 1),
            tok("\n", "rejected", 2, p=0.1, q=0.4),
            tok("\t", "not_reached", 3),
            tok("\n    ", "resampled", 2, q=0.2),
        ],
        total=3,
    )
    s1 = step(1, [tok(x, "accepted", i) for i, x in enumerate("def ")] + [tok("x", "bonus", 4, q=None)], 3, 8)
    s2 = step(2, [tok("\t", "bonus", 0, q=None)], 8, 9)  # no drafts: a plain target token
    return [s0, s1, s2]


def test_every_token_class_gets_its_style(steps):
    html = render.render_stream(steps)
    for origin, style in render.STYLES.items():
        assert f'class="sv-tok {style.css}' in html, f"{origin} not styled"
        assert f'data-origin="{origin}"' in html
    # the non-colour cue of each class is named in the legend, with the same class
    legend = render.render_legend()
    for style in render.STYLES.values():
        assert style.css in legend and style.cue in legend
    assert "step boundary" in legend


def test_text_is_html_escaped(steps):
    html = render.render_stream(steps, prompt="if a < b && c > d:\n\t'\"'")
    assert "<script>" not in html and "</script>" not in html
    assert "&lt;script&gt;alert(1)&lt;/script&gt;" in html
    assert "a &amp; b" in html
    assert "if a &lt; b &amp;&amp; c &gt; d:\n\t&#x27;&quot;&#x27;" in html
    # tooltips are attribute-escaped too (token repr inside data-tip)
    for tip in re.findall(r'data-tip="([^"]*)"', html):
        assert "<" not in tip and ">" not in tip


def test_whitespace_and_newlines_render_faithfully(steps):
    html = render.render_stream(steps)
    # an emitted newline stays a real newline (the stream is pre-wrap) with a faint glyph before it
    assert '<span class="sv-nlg" aria-hidden="true"></span>\n    </span>' in html
    # an emitted tab stays a tab
    assert '">\t</span>' in html
    # a discarded newline or tab is shown as a symbol, so it does not break the layout
    assert ">\u21b5</span>" in html and ">\u21e5</span>" in html
    body, extra = render.token_text_html("  ", discarded=True)
    assert body == "\u2423\u2423" and extra == []
    assert render.token_text_html("", discarded=False) == ("", ["sv-empty"])
    assert render.token_text_html(" ", discarded=False)[1] == ["sv-ws"]


def test_tooltip_carries_step_position_p_q_ratio_and_verdict(steps):
    t = steps[0].tokens[2]  # the rejected newline
    tip = render.token_tip(t, steps[0], "sample")
    assert tip.splitlines()[0] == "step 1 - draft position 3 of 4"
    assert "rejected: failed the min(1, p/q) test" in tip
    assert "p (target) = 0.1000" in tip and "q (draft)  = 0.4000" in tip
    assert "accept prob min(1, p/q) = 0.2500" in tip
    assert "token 7 '\\n'" in tip
    greedy = render.token_tip(t, steps[0], "greedy")
    assert "rejected: the target's top choice differs" in greedy
    corr = render.token_tip(steps[0].tokens[4], steps[0], "sample")
    assert "the target's token at position 3" in corr and "norm(max(0, p - q))" in corr
    assert "min(1, p/q)" not in corr.splitlines()[-2]  # no acceptance test for the target's own token
    bonus = render.token_tip(steps[1].tokens[-1], steps[1], "greedy")
    assert "bonus" in bonus and "q (draft)" not in bonus
    plain = render.token_tip(steps[2].tokens[0], steps[2], "greedy")
    assert "no draft" in plain
    assert render.fmt_prob(None) == "-" and render.fmt_prob(0.00001234) == "1.23e-05"


def test_step_boundaries_and_current_step(steps):
    html = render.render_stream(steps, current=1)
    assert html.count('class="sv-sep"') == 3
    assert re.findall(r'data-step="(\d+)"', html) == ["1", "2", "3"]
    assert html.count("sv-current") == 1 and 'class="sv-step sv-current" data-step="2"' in html


def test_stream_grows_by_appending(steps):
    """Streaming sends diffs: each redraw extends the previous HTML."""
    a = render.render_stream(steps[:1], prompt="p")
    b = render.render_stream(steps, prompt="p")
    assert b.startswith(a) and len(b) > len(a)
    assert render.render_stream([]) == render.EMPTY_STREAM


def test_theory_numbers_match_hand_computed_values():
    s = summary()
    t = theory_numbers(s)
    assert t["alpha"] == pytest.approx(0.8)  # accepted / (accepted + rejected) = 8 / 10
    # Leviathan et al.: (1 - 0.8^5) / (1 - 0.8) = (1 - 0.32768) / 0.2
    assert t["expected_tokens_per_step"] == pytest.approx(3.3616)
    # ... / (gamma c + 1) = 3.3616 / 3
    assert t["expected_speedup"] == pytest.approx(1.1205333, rel=1e-6)
    # Yin et al.: expected rejections = sum of TV distances
    assert t["expected_rejections"] == 2.5 and t["rejections"] == 2
    html = render.render_theory(s)
    for text in ("3.36", "1.12x", "1.50x", "2.5", "8/10 = 0.800", "0.500"):
        assert text in html, text
    assert "measured 1.50x (faster than plain)" in html
    assert render.render_theory(None).startswith('<div class="sv-theory sv-muted">')
    assert theory_numbers(summary(cost_ratio=None))["expected_speedup"] is None
    assert per_token_alpha(summary(accepted=0, rejections=0)) == 0.0


def test_the_prediction_counts_the_measured_cost_of_a_verification_pass():
    """with_plain measures V(k)/V(1) from the two runs' pass times; the prediction divides by it, and says so."""
    spec = summary(steps=10, verify_ms=1500.0, speedup=None)
    plain = summary(strategy="plain", steps=40, verify_ms=4000.0, drafted=0, accepted=0, cost_ratio=None)
    with_plain(spec, plain)
    assert spec.pass_ratio == pytest.approx(1.5)  # 150 ms a 5-token pass against 100 ms a one-token pass
    assert theory_numbers(spec)["expected_speedup"] == pytest.approx(3.3616 / 3 / 1.5)
    sentence = why(spec)
    assert "costs 1.50x a one-token pass" in sentence and "theory predicts 0.75x" in sentence, sentence
    assert plain.pass_ratio is None  # nothing was drafted: no verification pass to compare


def test_kpis_and_tables():
    spec, plain = (
        summary(),
        summary(strategy="plain", drafted=0, accepted=0, tokens_per_s=20.0, speedup=None, cost_ratio=None),
    )
    kpis = render.render_kpis(spec, plain)
    assert re.search(r'data-kpi="speedup"><b>1\.50x</b>', kpis) and "sv-good" in kpis
    assert re.search(r'data-kpi="plain_tps"><b>20\.0</b>', kpis)
    assert render.render_kpis(None, None) == ""
    table = tables.summary_table(spec, plain)
    assert list(table.columns) == tables.SUMMARY_COLUMNS
    assert table["speedup"].tolist() == [1.5, 1.0]
    assert table["tokens/s"].tolist() == [30.0, 20.0]
    assert table["mean accepted/step"].tolist()[0] == 0.8 and table["mean accepted/step"].isna().tolist()[1]
    assert table["c (draft/target cost)"].tolist()[0] == 0.5


def test_steps_table_has_one_row_per_step(steps):
    df = tables.steps_table(steps)
    assert len(df) == 3 and df["step"].tolist() == [0, 1, 2]
    assert df["accepted"].tolist() == [2, 4, 0] and df["rejected"].tolist() == [1, 0, 0]
    assert df["emitted_text"].tolist()[1] == "def x"
    assert df["target_token_origin"].tolist() == ["resampled", "bonus", "bonus"]
    assert "<script>" in df["drafted_text"][0]  # CSV keeps the raw text; only HTML is escaped


def test_step_panel_captions_each_stage(steps):
    html = render_step_panel(steps[0], "sample", None)
    for stage in ("1. Draft proposes", "2. Target checks", "3. Verdict", "4. Correction", "Result"):
        assert stage in html
    assert "rejected" in html and "thrown away" in html and "norm(max(0, p - q))" in html
    assert "did not attach" in html  # no detail: the page says why there is no chart
    detail = {"position": 2, "tokens": ["a"], "p": [0.5], "q": [0.4], "residual": [0.1]}
    panel = render_step_panel(steps[0], "sample", detail)
    assert "the 1 most likely tokens at the rejected position (draft position 3)" in panel
    assert "Not among them" not in panel  # without ids nothing can be said
    panel = render_step_panel(steps[0], "sample", {**detail, "token_ids": [1]})
    assert "Not among them: &#x27;\\n&#x27; (the rejected guess, p = 0.1000); &#x27;\\n    &#x27; (the target" in panel
    bonus = render_step_panel(steps[1], "greedy", detail, finished=True)
    assert "4. Bonus" in bonus and "All 4 guesses accepted" in bonus and "Generation finished" in bonus
    assert "No guesses this step" in render_step_panel(steps[2], "greedy")
    assert "Classroom mode" in render_step_panel(None, "greedy")


def test_status_lines_escape_and_show_progress():
    html = render.render_status("loading <b>model</b>", "busy", 0.42)
    assert "&lt;b&gt;model&lt;/b&gt;" in html and 'aria-valuenow="42"' in html and "width:42.0%" in html
    err = render.render_error("the prompt is empty")
    assert 'role="alert"' in err and "sv-error" in err


def test_compare_table_and_columns(steps):
    class Track:
        def __init__(self, label, summary, steps):
            self.label, self.summary, self.steps = label, summary, steps

    plain = summary(strategy="plain", output_ids=[1, 2, 3], tokens_per_s=20.0, speedup=None)
    a = Track("draft", summary(output_ids=[1, 2, 3], speedup=None), steps)
    b = Track("ngram", summary(output_ids=[1, 2, 4], tokens_per_s=40.0, speedup=None), steps)
    df = tables.compare_table([a, b, Track("plain", plain, steps), Track("unfinished", None, [])], plain)
    assert df["run"].tolist() == ["draft", "ngram", "plain"]
    assert df["same as plain"].tolist() == ["yes", "NO", "yes"]
    assert df["speedup"].tolist() == [1.5, 2.0, 1.0]
    html = render.render_side_by_side([a, b], "greedy")
    assert html.count('class="sv-col"') == 2 and 'data-run="ngram"' in html


def _imports(module: str) -> set[str]:
    out = subprocess.run(
        [sys.executable, "-c", f"import sys, {module}; print(' '.join(sorted(sys.modules)))"],
        cwd=ROOT,
        capture_output=True,
        text=True,
        check=True,
    )
    return set(out.stdout.split())


def test_renderers_never_import_torch():
    mods = _imports(
        "specviz.ui.render, specviz.ui.step_panel, specviz.ui.tables, specviz.ui.figures, specviz.ui.charts"
    )
    assert "torch" not in mods and "gradio" not in mods
