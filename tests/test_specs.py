"""Job specs: the acceptance cases through the real CLI, overrides, includes, secrets, templating, fuzzing.

Every bad spec must end as one line per problem naming the field, exit 2, and no traceback.
"""

from __future__ import annotations

import copy
import json
from pathlib import Path

import pytest
import yaml
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from typer.testing import CliRunner

from pipeline import specs
from pipeline.cli import app
from pipeline.specs import JobSpec, SpecError, load_job, render_output, validate_job

ROOT = Path(__file__).resolve().parents[1]
DEMO = ROOT / "jobs" / "demo.yaml"
MODEL = "outputs/models/demo/1"  # a model package URI; specs never open it


def write_job(tmp_path: Path, data: dict | str, name: str = "job.yaml") -> Path:
    path = tmp_path / name
    path.write_text(data if isinstance(data, str) else yaml.safe_dump(data, sort_keys=False), encoding="utf-8")
    return path


def minimal(**generate) -> dict:
    return {"name": "t", "generate": {"model": MODEL, "seeds": {"count": 10}, **generate}}


def run_cli(*args: str):
    return CliRunner().invoke(app, list(args))


def assert_spec_failure(result, field: str) -> str:
    """Exit 2, no traceback, and exactly one line naming ``field`` as `<file>: <field>: <message>`."""
    assert result.exit_code == 2, result.output
    assert result.exception is None or isinstance(result.exception, SystemExit), repr(result.exception)
    assert "Traceback" not in result.output
    lines = [ln for ln in result.output.splitlines() if f": {field}: " in ln or ln.split(": ")[1:2] == [field]]
    assert len(lines) == 1, result.output
    line = lines[0]
    assert line.split(": ", 1)[0].endswith(".yaml"), line
    return line


# --------------------------------------------------------------------------------------------- acceptance
def test_demo_validates_through_the_cli():
    result = run_cli("validate", str(DEMO))
    assert result.exit_code == 0, result.output
    assert "valid" in result.output.splitlines()[0]


def test_mistyped_key_names_the_key(tmp_path):
    job = minimal()
    job["generate"]["shard_sise"] = 100
    line = assert_spec_failure(run_cli("validate", str(write_job(tmp_path, job))), "generate.shard_sise")
    assert "unknown key" in line


def test_negative_seed_count(tmp_path):
    job = minimal()
    job["generate"]["seeds"]["count"] = -5
    line = assert_spec_failure(run_cli("validate", str(write_job(tmp_path, job))), "generate.seeds.count")
    assert line.endswith("generate.seeds.count: must be greater than 0")


def test_unknown_storage_scheme(tmp_path):
    job = minimal()
    job["storage"] = {"root": "ftp://host/assets"}
    line = assert_spec_failure(run_cli("validate", str(write_job(tmp_path, job))), "storage.root")
    assert "ftp://" in line and "unknown storage scheme" in line


def test_prompts_on_unconditional_image_model(tmp_path):
    job = {
        "name": "t",
        "train": {"model": {"conditional": False, "image_size": 32}},
        "generate": {"prompts": {"uri": "jobs/prompts/demo.jsonl"}},
    }
    line = assert_spec_failure(run_cli("validate", str(write_job(tmp_path, job))), "generate.prompts")
    assert "conditional" in line


def test_several_problems_one_line_each(tmp_path):
    job = minimal()
    job["generate"]["seeds"]["count"] = 0
    job["generate"]["shard_size"] = -1
    job["storage"] = {"root": "ftp://x"}
    result = run_cli("validate", str(write_job(tmp_path, job)))
    assert result.exit_code == 2
    for field in ("generate.seeds.count", "generate.shard_size", "storage.root"):
        assert sum(f": {field}: " in ln for ln in result.output.splitlines()) == 1, result.output


@pytest.mark.parametrize("text, expect", [
    ("name: [unclosed\n", "invalid YAML"),
    ("- just\n- a list\n", "must be a YAML mapping"),
    ("name: t\ncreated: 2020-02-30\n", "invalid YAML value"),   # PyYAML raises ValueError here
    ("name: t\nseed: !!int zz\n", "invalid YAML value"),
])
def test_broken_yaml_is_one_clean_line(tmp_path, text, expect):
    result = run_cli("validate", str(write_job(tmp_path, text)))
    assert result.exit_code == 2 and "Traceback" not in result.output
    assert expect in result.output


def test_missing_job_file(tmp_path):
    result = run_cli("validate", str(tmp_path / "nope.yaml"))
    assert result.exit_code == 2
    assert "nope.yaml: file not found" in result.output


# --------------------------------------------------------------------------------------------- --set
def test_set_parses_types_and_nests(tmp_path):
    path = write_job(tmp_path, minimal())
    job = load_job(path, [
        "generate.seeds.count=100",
        "generate.formats=[png]",
        "generate.scaling.num_gpus=0.5",
        "storage.root=s3://bucket/prefix",
        "evaluate.gate.max_fld=12.5",          # a section the file does not have
        "evaluate.samples=64",
        "train.scaling.use_gpu=true",
    ])
    assert job.generate.seeds.count == 100 and isinstance(job.generate.seeds.count, int)
    assert job.generate.formats == ["png"]
    assert job.generate.scaling.num_gpus == 0.5
    assert job.storage.root == "s3://bucket/prefix"
    assert job.evaluate.gate.max_fld == 12.5 and job.evaluate.samples == 64
    assert job.train.scaling.use_gpu is True


def test_set_through_cli(tmp_path):
    path = write_job(tmp_path, minimal())
    result = run_cli("validate", str(path), "--set", "generate.seeds.count=7", "--set", "generate.shard_size=3")
    assert result.exit_code == 0, result.output
    printed = yaml.safe_load(result.output.split("\n", 1)[1])
    assert printed["generate"]["seeds"]["count"] == 7 and printed["generate"]["shard_size"] == 3


@pytest.mark.parametrize("item, needle", [
    ("generate.seedz.count=1", "generate.seedz: unknown key"),
    ("generate.seeds.count=-1", "generate.seeds.count: must be greater than 0"),
    ("generate.seeds.count=lots", "generate.seeds.count"),
    ("novalue", "expected KEY=VALUE"),
    ("a..b=1", "not a dotted key path"),
    ("name.first=1", "'name' is not a section"),
    ("generate.seeds.count=!!int zz", "generate.seeds.count"),  # unparsable YAML stays text
])
def test_bad_set_is_one_line(tmp_path, item, needle):
    result = run_cli("validate", str(write_job(tmp_path, minimal())), "--set", item)
    assert result.exit_code == 2, result.output
    assert "Traceback" not in result.output
    hits = [ln for ln in result.output.splitlines() if needle in ln]
    assert len(hits) == 1, result.output


# --------------------------------------------------------------------------------------------- include
def test_include_merges_presets_and_the_job_wins(tmp_path):
    (tmp_path / "configs" / "models").mkdir(parents=True)
    write_job(tmp_path / "configs" / "models", {"train": {"model": {"channels": 3, "image_size": 64, "z_dim": 100}}},
              "rgb.yaml")
    (tmp_path / "jobs").mkdir()
    write_job(tmp_path / "jobs", {"storage": {"root": "s3://b/base", "region": "eu-west-1"}}, "store.yaml")
    job = {"name": "t", "include": ["models/rgb", "store.yaml"],
           "train": {"model": {"image_size": 32}}, "storage": {"root": "s3://b/mine"}}
    spec = load_job(write_job(tmp_path / "jobs", job))  # found via the ancestors' configs/ and beside the job
    assert spec.train.model.channels == 3 and spec.train.model.z_dim == 100
    assert spec.train.model.image_size == 32       # the job's own value beats the preset
    assert spec.storage.root == "s3://b/mine" and spec.storage.region == "eu-west-1"


def test_include_store_beside_job(tmp_path):
    write_job(tmp_path, {"storage": {"root": "memory://inc"}}, "store.yaml")
    spec = load_job(write_job(tmp_path, {**minimal(), "include": "store.yaml"}))
    assert spec.storage.root == "memory://inc"


def test_later_include_wins(tmp_path):
    write_job(tmp_path, {"train": {"epochs": 3}}, "a.yaml")
    write_job(tmp_path, {"train": {"epochs": 5}}, "b.yaml")
    spec = load_job(write_job(tmp_path, {"name": "t", "include": ["a.yaml", "b.yaml"]}))
    assert spec.train.epochs == 5


def test_missing_include(tmp_path):
    path = write_job(tmp_path, {**minimal(), "include": ["models/nope.yaml"]})
    result = run_cli("validate", str(path))
    assert result.exit_code == 2 and "Traceback" not in result.output
    assert "include: 'models/nope.yaml' not found" in result.output


@pytest.mark.parametrize("include", ["/", "a" * 5000, 5, ["x", 3]])
def test_odd_include_values_are_clean(tmp_path, include):
    with pytest.raises(SpecError) as err:
        load_job(write_job(tmp_path, {**minimal(), "include": include}))
    assert "include" in err.value.problems[0]


def test_include_cycle(tmp_path):
    write_job(tmp_path, {"include": "b.yaml"}, "a.yaml")
    write_job(tmp_path, {"include": "a.yaml"}, "b.yaml")
    with pytest.raises(SpecError) as err:
        load_job(write_job(tmp_path, {**minimal(), "include": "a.yaml"}))
    assert "includes itself" in str(err.value)


def test_error_in_included_file_names_that_file(tmp_path):
    write_job(tmp_path, "storage: {root: [oops\n", "bad.yaml")
    with pytest.raises(SpecError) as err:
        load_job(write_job(tmp_path, {**minimal(), "include": "bad.yaml"}))
    assert err.value.problems[0].startswith(str(tmp_path / "bad.yaml") + ":")


# --------------------------------------------------------------------------------------------- secrets
def test_plain_text_secret_is_refused_and_not_echoed(tmp_path):
    job = {**minimal(), "storage": {"root": "s3://b/p", "secret_key": "wJalrXUtnFEMI-K7MDENG-SECRETVALUE"}}
    result = run_cli("validate", str(write_job(tmp_path, job)))
    line = assert_spec_failure(result, "storage.secret_key")
    assert "secret_key_env" in line
    assert "SECRETVALUE" not in result.output


@pytest.mark.parametrize("value", ["AKIAIOSFODNN7EXAMPLE", "wJalrXUtnFEMI/K7MDENG/bPxRfiCYEXAMPLEKEY"])
def test_key_where_an_env_name_belongs(tmp_path, value):
    job = {**minimal(), "storage": {"root": "s3://b/p", "credentials": {"access_key_env": value}}}
    result = run_cli("validate", str(write_job(tmp_path, job)))
    line = assert_spec_failure(result, "storage.credentials.access_key_env")
    assert "NAME of an environment variable" in line
    assert value not in result.output


def test_secret_in_env_list_is_not_echoed(tmp_path):
    secret = "wJalrXUtnFEMI/K7MDENG/bPxRfiCYEXAMPLEKEY"
    result = run_cli("validate", str(write_job(tmp_path, {**minimal(), "env": ["AWS_REGION", secret]})))
    assert result.exit_code == 2 and "env" in result.output
    assert secret not in result.output


def test_secret_via_set_is_refused(tmp_path):
    result = run_cli("validate", str(write_job(tmp_path, minimal())), "--set", "storage.secret_key=TOPSECRET123")
    assert_spec_failure(result, "storage.secret_key")
    assert "TOPSECRET123" not in result.output


# --------------------------------------------------------------------------------------------- cross-field
@pytest.mark.parametrize("data_uri, root, output", [
    ("data/train", "data/train", "{root}/generated/{name}/{date}"),
    ("data/train", "outputs", "data/train/gen/{date}"),
    ("./data/train/", "data/train", "{root}/x"),               # same place, spelled differently
    ("file:///srv/data", "/srv/data", "{root}/x"),
    ("s3://bucket/train", "s3://bucket/train", "{root}/generated/{name}"),
    ("s3://bucket/train", "outputs", "s3://bucket//train/gen"),
])
def test_output_inside_training_data_is_refused(tmp_path, data_uri, root, output):
    job = {"name": "t", "storage": {"root": root},
           "train": {"data": {"source": "images", "uri": data_uri}},
           "generate": {"seeds": {"count": 1}, "output": output}}
    line = assert_spec_failure(run_cli("validate", str(write_job(tmp_path, job))), "generate.output")
    assert "inside the training data" in line


@pytest.mark.parametrize("data_uri, root", [("data/train", "outputs"), ("s3://bucket/train", "s3://bucket/train-out")])
def test_output_beside_training_data_is_fine(data_uri, root):
    job = validate_job({"name": "t", "storage": {"root": root},
                        "train": {"data": {"source": "images", "uri": data_uri}},
                        "generate": {"seeds": {"count": 1}}})
    assert job.generate.output.startswith("{root}")


@pytest.mark.parametrize("data, field", [
    ({"name": "t"}, "<root>"),
    ({"name": "t", "generate": {"seeds": {"count": 1}}}, "generate.model"),
    ({"name": "t", "generate": {"model": MODEL}}, "generate"),
    ({"name": "bad/name", "train": {}}, "name"),
    ({"name": "t", "train": {"data": {"source": "images"}}}, "train.data"),
    ({"name": "t", "train": {"data": {"source": "digits", "uri": "x"}}}, "train.data"),
    ({"name": "t", "generate": {"model": MODEL, "seeds": {"count": 1}, "output": "{root}/{when}"}}, "generate.output"),
    ({"name": "t", "generate": {"model": MODEL, "seeds": {"count": 1}, "output": "{root}/../up"}}, "generate.output"),
    ({"name": "t", "generate": {"model": MODEL, "seeds": {"count": 1}, "formats": []}}, "generate.formats"),
    ({"name": "t", "generate": {"model": MODEL, "prompts": {"uri": "p.docx"}}}, "generate.prompts.uri"),
    ({"name": "t", "storage": {"root": "my bucket://x"}, "train": {}}, "storage.root"),
    ({"name": "t", "storage": {"root": "out\nput"}, "train": {}}, "storage.root"),
])
def test_cross_field_and_value_checks(data, field):
    with pytest.raises(SpecError) as err:
        validate_job(data, "x.yaml")
    assert any(p.startswith(f"x.yaml: {field}") for p in err.value.problems), err.value.problems


def test_user_values_with_line_breaks_stay_on_one_line():
    with pytest.raises(SpecError) as err:
        validate_job({"name": "t", "train": {}, "env": ["A\nB\u2028C"], "odd\nkey": 1}, "x.yaml")
    assert len(err.value.problems) == 2
    for p in err.value.problems:
        assert len(p.splitlines()) == 1, p


# --------------------------------------------------------------------------------------------- templating
def test_render_output_fills_every_template():
    job = validate_job({"name": "nightly", "storage": {"root": "s3://bucket/prefix/"},
                        "generate": {"model": MODEL, "seeds": {"count": 1},
                                     "output": "{root}/gen/{name}/{date}/{run_id}"}})
    assert render_output(job, date="2026-11-28", run_id="r-7") == "s3://bucket/prefix/gen/nightly/2026-11-28/r-7"
    # run_id defaults to the date; date defaults to today
    assert render_output(job, date="2026-11-28") == "s3://bucket/prefix/gen/nightly/2026-11-28/2026-11-28"
    today = specs.today()
    assert render_output(job) == f"s3://bucket/prefix/gen/nightly/{today}/{today}"


def test_render_output_without_root_template():
    job = validate_job({"name": "n", "generate": {"model": MODEL, "seeds": {"count": 1}, "output": "memory://out/{name}-{date}"}})
    assert render_output(job, date="2026-01-02") == "memory://out/n-2026-01-02"


@pytest.mark.parametrize("date", ["2026/11/28", "2026-13-01", "../etc", "yesterday", "2026-11-28/.."])
def test_bad_date_refused(date):
    job = validate_job(minimal())
    with pytest.raises(SpecError) as err:
        render_output(job, date=date)
    assert err.value.problems[0].startswith("--date")


@pytest.mark.parametrize("run_id", ["a/b", "..", "a..b", "../x", "x" * 200, "-x", "r\n1"])
def test_bad_run_id_refused(run_id):
    job = validate_job(minimal())
    with pytest.raises(SpecError) as err:
        render_output(job, date="2026-01-01", run_id=run_id)
    assert err.value.problems[0].startswith("--run-id")
    assert len(err.value.problems[0].splitlines()) == 1


# --------------------------------------------------------------------------------------------- fingerprint
def test_fingerprint_is_stable_and_sensitive(tmp_path):
    a = load_job(DEMO)
    b = load_job(DEMO)
    assert a.fingerprint() == b.fingerprint() and len(a.fingerprint()) == 64
    # key order in the file does not matter
    raw = yaml.safe_load(DEMO.read_text())
    raw["include"] = [str(ROOT / "configs" / i) for i in raw["include"]]
    reordered = {k: raw[k] for k in reversed(list(raw))}
    reordered["generate"] = {k: raw["generate"][k] for k in reversed(list(raw["generate"]))}
    c = load_job(write_job(tmp_path, reordered))
    assert c.fingerprint() == a.fingerprint()
    # a value change changes it, and only the sections it is part of
    d = load_job(DEMO, ["train.epochs=16"])
    assert d.fingerprint() != a.fingerprint()
    assert d.fingerprint("train") != a.fingerprint("train")
    assert d.fingerprint("generate") == a.fingerprint("generate")
    # a spelled-out default equals the default
    e = load_job(DEMO, ["generate.scaling.num_cpus=0.5"])
    assert e.fingerprint() == a.fingerprint()


# --------------------------------------------------------------------------------------------- fuzzing
DEMO_RAW = yaml.safe_load(DEMO.read_text())
DEMO_RAW["include"] = [str(ROOT / "configs" / i) for i in DEMO_RAW["include"]]
ODD_STRINGS = ["{root}/x", "s3://b/x", "ftp://x", "-1", "0", "1e400", ".inf", "AKIAIOSFODNN7EXAMPLE", "..", "a/../b",
               "jobs/prompts/demo.jsonl", "gs://x/y", "memory://m", "digits", "images", "png", "parquet",
               "\u2028", "a\nb", "\x00", "é€😀", "{date}", "{", "}", "~", "null", "true", "2020-02-30"]
leaves = st.one_of(
    st.none(), st.booleans(),
    st.integers(-5, 5), st.integers(), st.sampled_from([2**63, -(2**63), 10**400, 2**31]),
    st.floats(allow_nan=True, allow_infinity=True),
    st.text(max_size=20), st.sampled_from(ODD_STRINGS),
)
keys = st.one_of(st.sampled_from(["name", "train", "generate", "seeds", "count", "model", "uri", "root", "include",
                                  "storage", "prompts", "output", "formats", "scaling", "data", "source", "gate"]),
                 st.text(max_size=10))
values = st.recursive(leaves, lambda kids: st.lists(kids, max_size=3) | st.dictionaries(keys, kids, max_size=3),
                      max_leaves=8)


def _paths(node, prefix=()):
    yield prefix
    if isinstance(node, dict):
        for k, v in node.items():
            yield from _paths(v, prefix + (k,))
    elif isinstance(node, list):
        for i, v in enumerate(node):
            yield from _paths(v, prefix + (i,))


@st.composite
def mutated_demo(draw) -> str:
    """The demo job with a few keys/values/types changed, as YAML text."""
    data = copy.deepcopy(DEMO_RAW)
    deep = None
    for _ in range(draw(st.integers(1, 4))):
        paths = [p for p in _paths(data) if p]
        if not paths:
            break
        path = draw(st.sampled_from(paths))
        parent = data
        for part in path[:-1]:
            parent = parent[part]
        last = path[-1]
        op = draw(st.sampled_from(["set", "set", "delete", "rename", "wrap", "deep"]))
        if op == "set":
            parent[last] = draw(values)
        elif op == "delete":
            del parent[last]
        elif op == "rename" and isinstance(parent, dict):
            parent[draw(keys)] = parent.pop(last)
        elif op == "wrap":
            parent[last] = draw(st.sampled_from([[parent[last]], {"x": parent[last]}, str(parent[last])]))
        elif op == "deep":
            parent[last] = "__DEEP__"
            deep = draw(st.sampled_from([50, 500, 5000]))
    text = yaml.safe_dump(data, allow_unicode=draw(st.booleans()))
    if deep:
        text = text.replace("__DEEP__", "[" * deep + "]" * deep, 1)
    return text


def check_outcome(fn) -> JobSpec | None:
    try:
        job = fn()
    except SpecError as exc:
        assert exc.problems, "SpecError with no problems"
        for p in exc.problems:
            assert isinstance(p, str) and p.strip(), exc.problems
            assert len(p.splitlines()) == 1, repr(p)
        return None
    assert isinstance(job, JobSpec)
    # what `aigc validate` then does with it must work too
    yaml.safe_dump(job.masked())
    json.dumps(job.masked())
    job.fingerprint()
    return job


FUZZ = settings(max_examples=200, deadline=None, suppress_health_check=[HealthCheck.too_slow])


@pytest.fixture(scope="module")
def fuzz_file(tmp_path_factory) -> Path:
    return tmp_path_factory.mktemp("fuzz") / "job.yaml"


@FUZZ
@given(text=st.one_of(st.text(max_size=300), mutated_demo()))
def test_fuzz_load_job_text(fuzz_file, text):
    fuzz_file.write_text(text, encoding="utf-8")
    check_outcome(lambda: load_job(fuzz_file))


@FUZZ
@given(blob=st.binary(max_size=200))
def test_fuzz_load_job_bytes(fuzz_file, blob):
    fuzz_file.write_bytes(blob)
    check_outcome(lambda: load_job(fuzz_file))


@FUZZ
@given(data=st.one_of(values, st.dictionaries(keys, values, max_size=6)))
def test_fuzz_validate_job_structures(data):
    check_outcome(lambda: validate_job(data, "fuzz.yaml"))


@FUZZ
@given(overrides=st.lists(st.one_of(st.text(max_size=40),
                                    st.builds(lambda k, v: f"{k}={v}",
                                              st.sampled_from(["generate.seeds.count", "name", "storage.root",
                                                               "train.epochs", "generate", "generate.formats", "x.y"]),
                                              st.one_of(st.text(max_size=20), st.sampled_from(ODD_STRINGS)))),
                          max_size=3))
def test_fuzz_set_overrides(overrides):
    check_outcome(lambda: load_job(DEMO, overrides))
