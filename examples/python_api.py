"""The Python API end to end: synthesize a corpus, open it as a `datasets.Dataset`, export it with a card.

    python examples/python_api.py OUTPUT_DIR EXPORT_DIR [key=value ...]

With no overrides it runs the demo preset (the bundled 135M model on CPU, a few minutes); the test suite runs
it with `engine.kind=echo`, which echoes prompts back instead of generating, to check the plumbing in seconds.
"""

from __future__ import annotations

import sys

import ray_entigraph as eg


def main(output_dir: str, export_dir: str, overrides: list[str]) -> None:
    config = eg.load_config("demo", [f"output_dir={output_dir}", *overrides])
    summary = eg.synthesize(config)  # resumable: a second call finds everything committed and returns
    print("\n".join(summary.lines()))

    ds = eg.load_corpus(output_dir)  # the current config's rows only, each once
    print(f"{len(ds)} synthetic rows; kinds: {sorted(set(ds['kind']))}")
    print(ds[0]["text"][:200])

    exported = eg.export(output_dir, export_dir)  # Parquet + dataset card; push with push_to_hub="org/name"
    print("\n".join(exported.lines()))


if __name__ == "__main__":
    if len(sys.argv) < 3:
        sys.exit(__doc__)
    main(sys.argv[1], sys.argv[2], sys.argv[3:])
