"""ray_entigraph: EntiGraph synthetic continued pretraining on Ray.

Importing the package is cheap: Ray, torch, transformers and vLLM are imported lazily by the modules
that own them.
"""

__version__ = "0.1.0"
