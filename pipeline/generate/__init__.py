"""Bulk generation for every family: the plan (:mod:`~pipeline.generate.plan`), the actor
(:mod:`~pipeline.generate.actor`) and the driver (:mod:`~pipeline.generate.driver`)."""

from pipeline.generate.driver import GenerateResult, model_uri_for, run_generate, run_key
from pipeline.generate.plan import Item, ShardPlan, item_seed, plan_shards, prompt_item_id, seed_item_id, shard_items

__all__ = ["GenerateResult", "Item", "ShardPlan", "item_seed", "model_uri_for", "plan_shards", "prompt_item_id",
           "run_generate", "run_key", "seed_item_id", "shard_items"]
