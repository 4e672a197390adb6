"""Networks shared by families: the prompt text encoder, the domain classifier of the evaluation, EMA and
DiffAugment. Each family keeps its own networks in its package (``pipeline/families/<arch>/model.py``)."""
