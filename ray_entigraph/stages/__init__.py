"""Ray Data stages: thin callable-class adapters around the pure functions in `ray_entigraph.text`.

Each stage class is constructed by Ray inside an actor (heavy imports and model load in `__init__`),
maps a batch in `__call__`, commits its output shard through `storage.StageStore`, and returns one small
manifest row per call that the driver streams for progress and the ledger.
"""
