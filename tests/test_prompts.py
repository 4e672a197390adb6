"""Prompt files: every format, and hostile input fuzzed with hypothesis. Every outcome is a clean
PromptSet (with rejections recorded) or a one-line PipelineError naming file:line — never a traceback."""

from __future__ import annotations

import json

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from pipeline.errors import PipelineError
from pipeline.prompts import load_prompts
from pipeline.safety import PromptFilter
from pipeline.specs import PromptsSpec

NO_FILTER = PromptFilter([], [])


def load(path, *, on_error="fail", num_classes=10, max_length=1000, samples=1, filt=NO_FILTER):
    spec = PromptsSpec(uri=str(path), on_error=on_error, max_length=max_length, samples_per_prompt=samples)
    return load_prompts(spec, None, num_classes=num_classes, prompt_filter=filt)


def test_all_four_formats_agree(tmp_path):
    rows = [{"prompt": "a zero", "label": 0, "n": 2}, {"prompt": "a seven, bold", "label": 7, "n": 1}]
    (tmp_path / "p.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    (tmp_path / "p.csv").write_text('prompt,label,n\na zero,0,2\n"a seven, bold",7,1\n')
    pq.write_table(pa.Table.from_pylist(rows), tmp_path / "p.parquet")
    got = {ext: [(p.text, p.label, p.n) for p in load(tmp_path / f"p.{ext}").prompts]
           for ext in ("jsonl", "csv", "parquet")}
    assert got["jsonl"] == got["csv"] == got["parquet"] == [("a zero", 0, 2), ("a seven, bold", 7, 1)]
    (tmp_path / "p.txt").write_text("a cat\n\nthe dog\n")
    ps = load(tmp_path / "p.txt", num_classes=None, on_error="skip", samples=3)
    assert [(p.line, p.text, p.n) for p in ps.prompts] == [(1, "a cat", 3), (3, "the dog", 3)]
    assert ps.rejected == [{"line": 2, "prompt": "", "reason": "empty prompt"}]


@pytest.mark.parametrize("content,where", [
    (b'{"prompt": "ok", "label": 1}\n\xff\xfeabc\n', ":2: not valid UTF-8"),
    (b'{"prompt": "ok", "label": 1}\n{"prompt": "a\\u0000b", "label": 1}\n', ":2: contains a NUL"),
    (b'{"prompt": "ok", "label": 1}\n\x00\n', ":2: contains a NUL byte"),
    (b'{"prompt": "ok", "label": 1}\n{"prompt": "x", "label": 1, "n": 0}\n', ":2: 'n' must be"),
    (b'{"prompt": "ok", "label": 1}\n{"prompt": "x", "label": "seven"}\n', ":2: 'label' must be"),
    (b'{"prompt": "ok", "label": 1}\n[1, 2]\n', ":2: each line must be a JSON object"),
    (b'{"prompt": "' + b"x" * 1_000_000 + b'", "label": 1}\n', ":1: prompt is 1000000 characters"),
])
def test_bad_jsonl_lines_name_the_line(tmp_path, content, where):
    p = tmp_path / "p.jsonl"
    p.write_bytes(content)
    with pytest.raises(PipelineError) as err:
        load(p)
    assert str(err.value).startswith(str(p) + where) and "\n" not in str(err.value)
    skipped = load(p, on_error="skip")
    assert skipped.rejected and skipped.rejected[-1]["line"] == int(where.split(":")[1])


def test_csv_quoting_error_and_empty_files(tmp_path):
    p = tmp_path / "p.csv"
    p.write_text('prompt,label\n"unterminated,1\n')
    with pytest.raises(PipelineError, match=r"p\.csv:\d+: CSV error"):
        load(p)
    p.write_text("text,label\nx,1\n")
    with pytest.raises(PipelineError, match=r"p\.csv:1: CSV header must have a 'prompt' column"):
        load(p)
    for ext in ("txt", "jsonl", "csv"):
        e = tmp_path / f"empty.{ext}"
        e.write_bytes(b"")
        with pytest.raises(PipelineError):
            load(e, num_classes=None)
    bad = tmp_path / "bad.parquet"
    bad.write_bytes(b"PAR1 not really")
    with pytest.raises(PipelineError, match="not a readable Parquet file"):
        load(bad)
    with pytest.raises(PipelineError, match="not found"):
        load(tmp_path / "missing.jsonl")


def test_labels_checked_against_the_model(tmp_path):
    p = tmp_path / "p.jsonl"
    p.write_text('{"prompt": "a ten", "label": 10}\n')
    with pytest.raises(PipelineError, match=r":1: label 10 is outside 0\.\.9"):
        load(p)
    p.write_text('{"prompt": "no label"}\n')
    with pytest.raises(PipelineError, match=r":1: needs a 'label'"):
        load(p)


def test_blocklist_matches_words_not_substrings(tmp_path):
    p = tmp_path / "p.txt"
    p.write_text("an assassin\nASS hat\nclass act\nkick-ass hero\nBad Thing here\n")
    ps = load(p, num_classes=None, filt=PromptFilter(["ass", "bad thing"], ["kick-ass"]))
    assert [x.text for x in ps.prompts] == ["an assassin", "class act", "kick-ass hero"]
    assert [(r["line"], r["reason"]) for r in ps.rejected] == [(2, "blocked term 'ass'"),
                                                               (5, "blocked term 'bad thing'")]


line = st.one_of(
    st.binary(max_size=200),
    st.text(max_size=200).map(lambda s: s.encode("utf-8", "surrogatepass")),
    st.builds(lambda d: json.dumps(d).encode(),
              st.dictionaries(st.sampled_from(["prompt", "n", "label", "x"]),
                              st.one_of(st.integers(-10**20, 10**20), st.text(max_size=30),
                                        st.floats(allow_nan=True), st.none(),
                                        st.booleans()), max_size=4)),
)


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(lines=st.lists(line, max_size=8), ext=st.sampled_from(["txt", "jsonl", "csv"]),
       on_error=st.sampled_from(["fail", "skip"]), labelled=st.booleans())
def test_fuzzed_prompt_files_never_traceback(tmp_path, lines, ext, on_error, labelled):
    p = tmp_path / f"fuzz.{ext}"
    p.write_bytes(b"\n".join(lines))
    try:
        ps = load(p, on_error=on_error, num_classes=10 if labelled else None, max_length=100)
    except PipelineError as exc:
        msg = str(exc)
        assert msg.startswith(str(p)) and "\n" not in msg
        return
    for pr in ps.prompts:
        assert pr.text and "\x00" not in pr.text and len(pr.text) <= 100 and pr.n >= 1
        if labelled:
            assert 0 <= pr.label < 10
    for r in ps.rejected:
        json.dumps(r)  # recordable
        assert r["reason"] and isinstance(r["line"], int)
