"""Starting or joining Ray on the driver, the one place that does it: a local instance on a laptop, the
cluster when `RAY_ADDRESS` is set (as `ray job submit` does)."""

from __future__ import annotations

import logging
import os

from ray_entigraph import storage
from ray_entigraph.config import EntiGraphConfig, is_arm_in_its_run_folder
from ray_entigraph.layout import Layout

LOG_LEVEL_ENV = "RAY_ENTIGRAPH_LOG_LEVEL"  # the CLI's -v / -q / --log-level, for the driver and every worker
# Libraries inside the actors draw progress bars and advisories of their own (weights loading, vLLM's
# "Processed prompts"): in `ray job logs` they are noise between our progress lines, so they are off there.
QUIET_LIBRARIES = {"HF_HUB_DISABLE_PROGRESS_BARS": "1", "TRANSFORMERS_VERBOSITY": "error",
                   "TRANSFORMERS_NO_ADVISORY_WARNINGS": "1", "TQDM_DISABLE": "1"}


def log_level() -> str:
    return os.environ.get(LOG_LEVEL_ENV, "WARNING").upper()


def init_ray(config: EntiGraphConfig) -> None:
    import ray  # lazy: `import ray_entigraph` and the CLI's help work without starting Ray

    # the object-store settings for this process and, through the job's environment, every worker of the run
    # (under `ray job submit` Ray merges this with the submitted runtime environment)
    env_vars = storage.configure(config.storage.settings())
    if not ray.is_initialized():
        os.environ.setdefault("RAY_DEDUP_LOGS", "1")
        level = log_level()
        # RAY_ADDRESS (set by `ray job submit`) connects to the cluster; otherwise a local instance starts. The
        # log level reaches every task and actor of the job through Ray's logging config.
        ray.init(ignore_reinit_error=True, include_dashboard=False, log_to_driver=True, logging_level=logging.WARNING,
                 logging_config=ray.LoggingConfig(encoding="TEXT", log_level=level),
                 runtime_env={"env_vars": {**QUIET_LIBRARIES, LOG_LEVEL_ENV: level, **env_vars}})
    from ray.data import DataContext

    ctx = DataContext.get_current()
    ctx.enable_progress_bars = False  # our own progress line carries an ETA in request units
    ctx.print_on_execution_start = False


def save_resolved_config(config: EntiGraphConfig) -> None:
    """The resolved config next to the run's outputs (`status` and later runs read it), in a folder of this
    layout version (a new folder is stamped with it first)."""
    Layout(config.output_dir, num_partitions=config.num_partitions).check_version(create=True)
    if is_arm_in_its_run_folder(config):
        return  # an arm (run's control, a sweep or ablation arm) in the run's folder: config.yaml stays the run's
    storage.write_text(Layout(config.output_dir).config_url, config.to_yaml())
