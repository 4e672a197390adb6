"""Every definition file in the repo loads: each job in jobs/, and each fragment in configs/ when included."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml
from typer.testing import CliRunner

from pipeline.catalog.registry import parse_config
from pipeline.cli import app
from pipeline.specs import SpecError, load_job, uri_scheme

ROOT = Path(__file__).resolve().parents[1]
JOBS = sorted((ROOT / "jobs").glob("*.yaml"))
FRAGMENTS = sorted((ROOT / "configs").rglob("*.yaml"))
MODEL = "outputs/models/x/1"


def test_there_are_definitions():
    assert JOBS, "jobs/*.yaml is empty"
    assert FRAGMENTS, "configs/**/*.yaml is empty"


@pytest.mark.parametrize("path", JOBS, ids=lambda p: p.name)
def test_job_validates(path, monkeypatch):
    monkeypatch.chdir(ROOT)  # prompt files and includes are written relative to the repo root
    job = load_job(path.relative_to(ROOT))
    assert job.name
    # a local prompts file a job names must exist, or the job fails later at generate time
    if job.generate and job.generate.prompts and uri_scheme(job.generate.prompts.uri) == "file":
        assert (ROOT / job.generate.prompts.uri.removeprefix("file://")).is_file(), job.generate.prompts.uri


def _leaves(node, prefix=()):
    if isinstance(node, dict):
        for k, v in node.items():
            yield from _leaves(v, prefix + (k,))
    else:
        yield prefix, node


def _write(tmp_path: Path, data: dict) -> Path:
    path = tmp_path / "job.yaml"
    path.write_text(yaml.safe_dump(data, sort_keys=False))
    return path


@pytest.mark.parametrize("fragment", FRAGMENTS, ids=lambda p: str(p.relative_to(ROOT / "configs")))
def test_fragment_validates_when_included(fragment, tmp_path):
    frag = yaml.safe_load(fragment.read_text()) or {}
    assert isinstance(frag, dict), f"{fragment}: a fragment must be a mapping"
    base = {"name": "t", "include": [str(fragment)], "generate": {"seeds": {"count": 1}}}
    if "train" not in frag:
        base["generate"]["model"] = MODEL  # no train stage: generate needs a model package
    job = load_job(_write(tmp_path, base))
    # every value the fragment sets is what the job ends up with
    dumped = job.model_dump(mode="json")
    for path, value in _leaves(frag):
        node = dumped
        for part in path:
            node = node[part]
        assert node == value, (path, node, value)

    # Model presets: prompts are accepted exactly when the preset is conditional.
    model = frag.get("train", {}).get("model")
    if model is not None:
        with_prompts = {**base, "generate": {"prompts": {"uri": "jobs/prompts/demo.jsonl"}}}
        if model.get("conditional"):
            assert load_job(_write(tmp_path, with_prompts)).generate.prompts is not None
        else:
            with pytest.raises(SpecError) as err:
                load_job(_write(tmp_path, with_prompts))
            assert any("generate.prompts" in p for p in err.value.problems)


def test_fragments_combine_with_demo(tmp_path):
    """Every storage profile can replace the demo's storage, and every model preset its model (a preset
    of another family without the DCGAN's quality recipe, whose options only the DCGAN reads)."""
    demo = yaml.safe_load((ROOT / "jobs" / "demo.yaml").read_text())
    for fragment in FRAGMENTS:
        kind = fragment.parent.name
        arch = (yaml.safe_load(fragment.read_text()).get("train") or {}).get("model", {}).get("arch", "dcgan")
        drop = (kind + "/",) + (("recipes/",) if arch != "dcgan" else ())
        includes = [str(ROOT / "configs" / i) for i in demo["include"] if not i.startswith(drop)]
        job = {**demo, "include": includes + [str(fragment)]}
        frag = yaml.safe_load(fragment.read_text())
        preset = frag.get("train", {}).get("model")
        conditional = getattr(parse_config(preset), "conditional", False) if preset else True
        if not conditional:
            job = {**job, "generate": {k: v for k, v in demo["generate"].items() if k != "prompts"}}
        load_job(_write(tmp_path, job))


def test_cli_validate_demo(monkeypatch):
    monkeypatch.chdir(ROOT)
    result = CliRunner().invoke(app, ["validate", "jobs/demo.yaml"])
    assert result.exit_code == 0, result.output
    assert result.output.startswith("# jobs/demo.yaml: valid")
    printed = yaml.safe_load(result.output)
    assert printed["name"] == "demo" and printed["train"]["model"]["conditional"] is True
