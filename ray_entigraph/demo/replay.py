"""General text that needs no download: docstrings of the Python standard library (PSF-licensed, present on
every Python install), written once as JSON Lines into the cache directory.

`builtin:stdlib-docs` is a replay corpus for training; `builtin:stdlib-docs-heldout` comes from other modules,
with every docstring of the training split removed, so that evaluation can measure forgetting on text the
model was not trained on."""

from __future__ import annotations

import importlib
import json
import os
import pkgutil
import sys
from pathlib import Path

from ray_entigraph import storage

BUILTIN = "builtin:stdlib-docs"
BUILTIN_HELDOUT = "builtin:stdlib-docs-heldout"
_MODULES = ("argparse", "asyncio", "collections", "csv", "datetime", "decimal", "email", "functools", "http",
            "json", "logging", "os", "pathlib", "random", "re", "sqlite3", "statistics", "string", "threading",
            "unittest", "urllib", "xml", "zipfile", "textwrap", "calendar", "fractions", "heapq", "inspect")
_HELDOUT_MODULES = ("shutil", "subprocess", "tarfile", "pickle", "typing", "dataclasses", "enum", "itertools",
                    "contextlib", "copy", "difflib", "hashlib", "tempfile", "io", "codecs", "configparser", "pprint",
                    "weakref", "abc", "numbers", "bisect", "queue", "sched", "selectors", "mailbox", "mimetypes",
                    "smtplib", "imaplib", "ftplib", "shlex", "gettext", "locale", "base64", "secrets", "socket")


def stdlib_docstrings_path(cache_dir: str | Path | None = None, split: str = "train") -> str:
    suffix = "" if split == "train" else f"-{split}"
    path = (Path(cache_dir or storage.local_cache_dir())
            / f"stdlib-docs{suffix}-py{sys.version_info.major}{sys.version_info.minor}.jsonl")
    if path.exists():
        return str(path)
    if split == "train":
        rows = _docstrings(_MODULES, set())
    else:
        rows = _docstrings(_HELDOUT_MODULES, {r["text"] for r in _docstrings(_MODULES, set())})
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(f".{os.getpid()}.tmp")
    tmp.write_text("".join(json.dumps(r) + "\n" for r in rows))
    os.replace(tmp, path)
    return str(path)


def _docstrings(modules: tuple[str, ...], exclude: set[str]) -> list[dict]:
    rows, seen = [], set(exclude)
    for name in modules:
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
            if isinstance(doc, str) and len(doc) > 200 and doc.strip() not in seen:
                seen.add(doc.strip())
                rows.append({"title": getattr(obj, "__name__", name), "text": doc.strip()})
    return rows
