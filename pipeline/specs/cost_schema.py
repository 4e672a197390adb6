"""``cost``: the job's own price table, which turns what a run used into what it cost (pipeline.cost).

No field has a default price: a provider's list prices change, differ by region and contract, and
a figure the job did not set would be a guess dressed as a fact. A price left out is not charged,
and the run record says which ones were given.
"""

from __future__ import annotations

from pydantic import Field, field_validator, model_validator

from pipeline.checks import Strict

PRICES = ("cpu_hour", "gpu_hour", "put_per_1k", "get_per_1k", "gb_month")


class CostSpec(Strict):
    """Prices per unit, in ``currency``; each left out is not charged."""

    currency: str = Field("USD", min_length=1, max_length=8, description="What the prices are in (a label only).")
    cpu_hour: float | None = Field(None, ge=0, description="Price of one CPU-hour (a core for an hour).")
    gpu_hour: float | None = Field(None, ge=0, description="Price of one GPU-hour.")
    put_per_1k: float | None = Field(None, ge=0, description="Price of 1,000 write requests (PUT, POST, COPY, LIST "
                                                             "on S3's price list; LIST is counted with them).")
    get_per_1k: float | None = Field(None, ge=0, description="Price of 1,000 read requests (GET, HEAD).")
    gb_month: float | None = Field(None, ge=0, description="Price of storing 1 GB (10^9 bytes) for a month: charged "
                                                           "once for the bytes a run wrote.")

    @field_validator("currency")
    @classmethod
    def _currency(cls, v: str) -> str:
        if not v.replace("_", "").isalnum():
            raise ValueError("must be a short label such as USD or EUR")
        return v

    @model_validator(mode="after")
    def _some(self) -> CostSpec:
        if all(getattr(self, k) is None for k in PRICES):
            raise ValueError(f"give at least one price ({', '.join(PRICES)})")
        return self
