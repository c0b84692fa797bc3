"""ray_entigraph: EntiGraph synthetic continued pretraining on Ray.

The Python API (api.py), importable from the package:

    import ray_entigraph as eg

    config = eg.load_config("demo", ["output_dir=/tmp/run"])
    eg.run(config)                       # synthesize -> train -> eval, resumable
    ds = eg.load_corpus("/tmp/run")      # datasets.Dataset of the current synthetic rows

Importing the package is cheap: the API, Ray, torch, transformers and vLLM are imported lazily, on first use.
"""

from ray_entigraph.version import __version__

_API = ("load_config", "synthesize", "train", "evaluate", "run", "sweep", "ablate", "load_corpus", "run_config",
        "export")
__all__ = ["__version__", *_API]


def __getattr__(name: str):
    if name == "train":  # the training subpackage, callable as the API's train step (train/__init__.py)
        import importlib

        return importlib.import_module("ray_entigraph.train")
    if name == "export":
        from ray_entigraph.publish import export

        return export
    if name in _API:
        from ray_entigraph import api

        return getattr(api, name)
    raise AttributeError(f"module 'ray_entigraph' has no attribute {name!r}")
