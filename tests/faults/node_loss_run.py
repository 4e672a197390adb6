"""Driver for test_node_removed_mid_run: a 3-node ray.cluster_utils.Cluster on loopback, one worker
node removed while generation runs; prints NODE REMOVED and VERIFIED <n> on success."""

import os
import sys
import threading
import time
from pathlib import Path

os.environ["RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER"] = "0"

import ray
from ray.cluster_utils import Cluster

from pipeline.generate import run_generate
from pipeline.runtime import quiet_ray_data
from pipeline.specs import validate_job
from pipeline.storage import verify

pkg, root = sys.argv[1], sys.argv[2]
cluster = Cluster(initialize_head=True, head_node_args={"num_cpus": 0, "object_store_memory": 300_000_000})
workers = [cluster.add_node(num_cpus=1, object_store_memory=300_000_000) for _ in range(2)]
cluster.wait_for_nodes()
ray.init(address=cluster.address)
quiet_ray_data()
try:
    job = validate_job({"name": "f", "storage": {"root": root},
                        "generate": {"model": pkg, "seed": 3, "seeds": {"count": 8000}, "shard_size": 250,
                                     "output": "{root}/{name}/{date}",
                                     "scaling": {"num_actors": 2, "num_cpus": 0.5, "batch_size": 250}}})
    shards = Path(root) / "f" / "2026-11-28" / "_shards"

    def remove():
        while len(list(shards.glob("*.json"))) < 4:
            time.sleep(0.05)
        cluster.remove_node(workers[1], allow_graceful=False)
        print("NODE REMOVED", flush=True)

    threading.Thread(target=remove, daemon=True).start()
    res = run_generate(job, date="2026-11-28", progress=False)
    report = verify(res.output)
    assert report.ok, report.lines()
    assert len(list((Path(res.output) / "images").rglob("*.png"))) == 8000
    print(f"VERIFIED {res.items}", flush=True)
finally:
    ray.shutdown()
    cluster.shutdown()
