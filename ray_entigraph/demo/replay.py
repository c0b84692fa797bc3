"""A general-text replay corpus that needs no download: docstrings of the Python standard library
(PSF-licensed, present on every Python install), written once as JSON Lines into the cache directory."""

from __future__ import annotations

import importlib
import json
import os
import pkgutil
import sys
from pathlib import Path

BUILTIN = "builtin:stdlib-docs"
_MODULES = ("argparse", "asyncio", "collections", "csv", "datetime", "decimal", "email", "functools", "http",
            "json", "logging", "os", "pathlib", "random", "re", "sqlite3", "statistics", "string", "threading",
            "unittest", "urllib", "xml", "zipfile", "textwrap", "calendar", "fractions", "heapq", "inspect")


def stdlib_docstrings_path(cache_dir: str | Path | None = None) -> str:
    from ray_entigraph.engines.bundled import default_cache_dir

    path = Path(cache_dir or default_cache_dir()) / f"stdlib-docs-py{sys.version_info.major}{sys.version_info.minor}.jsonl"
    if path.exists():
        return str(path)
    rows, seen = [], set()
    for name in _MODULES:
        try:
            mod = importlib.import_module(name)
        except Exception:  # noqa: BLE001 - a module missing from this Python is skipped
            continue
        objects = [mod] + [getattr(mod, a) for a in sorted(dir(mod)) if not a.startswith("_")]
        for sub in getattr(mod, "__path__", None) and pkgutil.iter_modules(mod.__path__) or []:
            if sub.name.startswith("_") or "test" in sub.name:
                continue  # never import __main__ (it runs things) or test modules
            try:
                objects.append(importlib.import_module(f"{name}.{sub.name}"))
            except Exception:  # noqa: BLE001
                continue
        for obj in objects:
            doc = getattr(obj, "__doc__", None)
            if isinstance(doc, str) and len(doc) > 200 and doc not in seen:
                seen.add(doc)
                rows.append({"title": getattr(obj, "__name__", name), "text": doc.strip()})
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(".tmp")
    tmp.write_text("".join(json.dumps(r) + "\n" for r in rows))
    os.replace(tmp, path)
    return str(path)
