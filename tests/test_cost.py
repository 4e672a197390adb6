"""What a run used and cost (issue 17): CPU-seconds measured where the work ran, requests counted by the
stores, a price table in the spec with no default prices, the cost per 1,000 assets in `aigc run`'s
summary, the run record, the manifest and the report."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from pipeline.cost import estimate, summary_line
from pipeline.runner import run_job
from pipeline.specs import SpecError, validate_job

from helpers import make_package

DATE = "2026-11-28"
PRICES = {"currency": "EUR", "cpu_hour": 0.05, "put_per_1k": 0.005, "get_per_1k": 0.0004, "gb_month": 0.02}


def job(root, model, storage=None, cost=PRICES, count=300):
    spec = {"name": "c", "storage": {"root": str(root), **(storage or {})},
            "generate": {"model": model, "seeds": {"count": count}, "shard_size": 100,
                         "scaling": {"num_actors": 2, "num_cpus": 0.5, "batch_size": 50}}}
    if cost is not None:
        spec["cost"] = cost
    return validate_job(spec, "test")


@pytest.fixture(scope="module")
def package(tmp_path_factory):
    return make_package(tmp_path_factory.mktemp("pkg") / "model")


def test_the_price_table_has_no_defaults_and_names_bad_fields():
    with pytest.raises(SpecError, match="cost: give at least one price"):
        validate_job({"name": "x", "generate": {"model": "m", "seeds": {"count": 1}}, "cost": {}}, "t.yaml")
    with pytest.raises(SpecError, match="cost.cpu_hour: must be greater than or equal to 0"):
        validate_job({"name": "x", "generate": {"model": "m", "seeds": {"count": 1}}, "cost": {"cpu_hour": -1}},
                     "t.yaml")
    # a price table is not part of what fixes the bytes: generate's run key does not see it
    from pipeline.generate.driver import run_key

    a = validate_job({"name": "x", "generate": {"model": "m", "seeds": {"count": 1}}})
    b = validate_job({"name": "x", "generate": {"model": "m", "seeds": {"count": 1}}, "cost": {"cpu_hour": 1}})
    assert run_key(a, "0" * 64, DATE) == run_key(b, "0" * 64, DATE)


def test_estimate_charges_only_the_prices_given():
    usage = {"train": {"cpu_s": 7200.0, "gpu_s": 3600.0},
             "generate": {"cpu_s": 3600.0, "requests": {"PUT": 3000, "LIST": 1000, "GET": 500, "HEAD": 500,
                                                         "DELETE": 9}, "bytes": 2 * 10**9, "items": 2000}}
    c = estimate(usage, {"currency": "USD", "cpu_hour": 0.1, "put_per_1k": 0.005})
    assert c["lines"] == {"cpu": 0.3, "gpu": 0.0, "write_requests": 0.02, "read_requests": 0.0, "storage_month": 0.0}
    assert c["total"] == 0.32 and c["per_1k_assets"] == 0.16 and c["priced"] == ["cpu_hour", "put_per_1k"]
    assert "0.1600 USD per 1,000 assets" in summary_line(c)
    bare = estimate(usage, None)
    assert "total" not in bare and "no price table" in summary_line(bare)


def test_a_run_records_its_usage_and_cost(ray_session, package, tmp_path):
    summary = run_job(job(tmp_path, package), date=DATE, log=lambda *a: None, progress=False)
    line = summary.lines()[-1]
    assert line.strip().startswith("cost: ") and "EUR per 1,000 assets" in line, summary.lines()
    record = json.loads((tmp_path / "runs" / "c" / f"{DATE}.json").read_text())
    used = record["usage"]["generate"]
    assert used["items"] == 300 and used["bytes"] > 300 * 500
    assert used["cpu_s"] > 0.5  # the actors' own CPU time (their start and model load included) and the driver's
    assert record["cost"]["currency"] == "EUR" and record["cost"]["per_1k_assets"] > 0
    assert record["cost"]["total"] == pytest.approx(
        used["cpu_s"] / 3600 * 0.05 + used["bytes"] / 1e9 * 0.02, abs=1e-5)  # local disk: no requests
    out = Path(record["stages"][0]["outputs"][0])
    manifest = json.loads((out / "manifest.json").read_text())
    assert manifest["usage"]["cpu_s"] == used["cpu_s"] and manifest["cost"]["total"] == record["cost"]["total"]

    from pipeline.report.build import build_report

    html = Path(build_report(str(out), log=lambda *a: None).index).read_text()
    assert "per 1,000 assets" in html and "CPU-s" in html


def test_requests_to_s3_are_counted_into_the_manifest(ray_session, package, s3_storage):
    from pipeline.storage import Store

    storage = s3_storage.model_dump(mode="json", exclude_none=True)
    summary = run_job(job(None, package, storage=storage), date=DATE, log=lambda *a: None, progress=False)
    out = summary.stages[0].outputs[0]
    manifest = Store(out, s3_storage).read_json("manifest.json")
    req = manifest["usage"]["requests"]
    # 300 PNGs + 3 Parquet parts + 3 shard indexes, then _job.json, manifest.json, _SUCCESS (and the lock's)
    assert req["PUT"] >= 300 + 3 + 3 + 3 and req.get("LIST", 0) >= 1
    assert manifest["cost"]["lines"]["write_requests"] == pytest.approx(
        (req["PUT"] + req.get("LIST", 0)) / 1000 * 0.005, abs=1e-6)
