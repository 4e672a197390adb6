"""What a run used and, with the job's price table (``cost``), what it cost.

Usage per stage is measured where the work ran: the Ray Train workers' and the generation actors'
own CPU time (``getrusage``: user + system, every thread) and the seconds they held a GPU, plus
the driver's own CPU time; never wall time times slots. Requests are those the stage's stores
counted (PUT-class: PUT, LIST, multipart and copy calls; GET-class: GET and HEAD), bytes
those it wrote.

    >>> usage = {"generate": {"cpu_s": 3600.0, "gpu_s": 0.0, "requests": {"PUT": 2000}, "bytes": 10**9,
    ...                       "items": 1000}}
    >>> c = estimate(usage, {"currency": "EUR", "cpu_hour": 0.05, "put_per_1k": 0.005, "gb_month": 0.02})
    >>> c["total"], c["per_1k_assets"]
    (0.08, 0.08)
"""

from __future__ import annotations

from typing import Any

WRITE_REQUESTS = ("PUT", "LIST")  # S3's PUT-class price (multipart and copy calls are counted as PUT: Store.requests)
READ_REQUESTS = ("GET", "HEAD")  # DELETE is free; retries are already counted in their kind


def _requests(stage: dict, kinds: tuple[str, ...]) -> int:
    return sum(int(v) for k, v in (stage.get("requests") or {}).items() if k in kinds)


def totals(usage: dict[str, dict[str, Any]]) -> dict[str, Any]:
    """The run's sums over its stages."""
    return {"cpu_s": round(sum(float(s.get("cpu_s") or 0) for s in usage.values()), 2),
            "gpu_s": round(sum(float(s.get("gpu_s") or 0) for s in usage.values()), 2),
            "write_requests": sum(_requests(s, WRITE_REQUESTS) for s in usage.values()),
            "read_requests": sum(_requests(s, READ_REQUESTS) for s in usage.values()),
            "bytes": sum(int(s.get("bytes") or 0) for s in usage.values()),
            "items": sum(int(s.get("items") or 0) for s in usage.values())}


def estimate(usage: dict[str, dict[str, Any]], prices: dict[str, Any] | None) -> dict[str, Any]:
    """Cost per line of the price table, the total and the cost per 1,000 assets; prices left out are not
    charged (``priced`` names those given). Without prices: the usage totals only."""
    t = totals(usage)
    out: dict[str, Any] = {"usage": t}
    if not prices:
        return out
    p = {k: v for k, v in prices.items() if v is not None}
    lines = {"cpu": t["cpu_s"] / 3600 * p.get("cpu_hour", 0.0),
             "gpu": t["gpu_s"] / 3600 * p.get("gpu_hour", 0.0),
             "write_requests": t["write_requests"] / 1000 * p.get("put_per_1k", 0.0),
             "read_requests": t["read_requests"] / 1000 * p.get("get_per_1k", 0.0),
             "storage_month": t["bytes"] / 1e9 * p.get("gb_month", 0.0)}
    total = sum(lines.values())
    out.update(currency=p.get("currency", "USD"), priced=sorted(k for k in p if k != "currency"),
               lines={k: round(v, 6) for k, v in lines.items()}, total=round(total, 6),
               per_1k_assets=round(total / t["items"] * 1000, 6) if t["items"] else None)
    return out


def summary_line(cost: dict[str, Any]) -> str:
    """One line for ``aigc run``'s summary."""
    t = cost["usage"]
    used = (f"{t['cpu_s']:,.0f} CPU-s" + (f", {t['gpu_s']:,.0f} GPU-s" if t["gpu_s"] else "")
            + f", {t['write_requests']:,} write and {t['read_requests']:,} read requests, {t['bytes']:,} bytes written")
    if "total" not in cost:
        return f"used: {used} (no cost: the job sets no price table)"
    per = (f", {cost['per_1k_assets']:.4f} {cost['currency']} per 1,000 assets" if cost["per_1k_assets"] is not None
           else "")
    return f"cost: {cost['total']:.4f} {cost['currency']}{per} ({used}; priced: {', '.join(cost['priced'])})"
