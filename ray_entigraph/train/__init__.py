"""Continued pretraining: tokenize and pack texts into blocks, mix replay in, train on Ray Train, export.

The package is also the Python API's `train` step: `ray_entigraph.train(config)` does what `api.train` does.
Python binds an imported subpackage to its parent's attribute of the same name, so the API function could not
live at `ray_entigraph.train` beside this package; the package is made callable instead.
"""

import sys
import types


class _TrainPackage(types.ModuleType):
    def __call__(self, config="demo", overrides=None):
        """`ray_entigraph.api.train`: continued pretraining on a config, a preset name or a YAML path."""
        from ray_entigraph import storage
        from ray_entigraph.config import as_config
        from ray_entigraph.train.launch import run_train

        config = as_config(config, overrides)
        storage.configure(config.storage.settings())
        return run_train(config)


sys.modules[__name__].__class__ = _TrainPackage
