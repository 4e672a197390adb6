"""Training with Ray Train, the same machinery for every family: the driver (:mod:`~pipeline.train.driver`),
the checkpoint format (:mod:`~pipeline.train.checkpoint`), run folders and resume points
(:mod:`~pipeline.train.run`), what a worker loop shares (:mod:`~pipeline.train.worker`) and the loopback
rendezvous (:mod:`~pipeline.train.rendezvous`)."""
