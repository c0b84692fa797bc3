"""`ray-entigraph view` rendered in headless Chromium: the page's graph, read from the rendered DOM, holds one
node per entity and one edge per relation text of the documents it shows; a screenshot is written.

    .venv/bin/python benchmarks/view_render.py OUTPUT_DIR [--max-documents N] [--screenshot docs/images/view.png]

Needs a Chromium binary (Debian: `apt-get install chromium`). Prints
`RESULT view_nodes=<n> view_edges=<n> run_entities=<n> run_relation_texts=<n> documents_shown=<n> of=<n> match=<bool>`.
"""

from __future__ import annotations

import argparse
import re
import shutil
import subprocess
import tempfile
from pathlib import Path


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("output_dir")
    ap.add_argument("--max-documents", type=int, default=6)
    ap.add_argument("--screenshot", default=None)
    args = ap.parse_args()

    from ray_entigraph.view import build_view

    chromium = shutil.which("chromium") or shutil.which("chromium-browser") or shutil.which("google-chrome")
    if chromium is None:
        raise SystemExit("no Chromium binary on PATH (Debian: apt-get install chromium)")
    with tempfile.TemporaryDirectory() as tmp:
        page = Path(tmp) / "view.html"
        shown = build_view(args.output_dir, str(page), max_documents=args.max_documents)
        flags = [chromium, "--headless", "--no-sandbox", "--disable-gpu", "--hide-scrollbars"]
        dom = subprocess.run([*flags, "--dump-dom", page.as_uri()], capture_output=True, text=True, timeout=120).stdout
        body = re.search(r"<body[^>]*>", dom)
        attrs = dict(re.findall(r'data-(nodes|edges)="(\d+)"', body.group(0) if body else ""))
        nodes, edges = int(attrs.get("nodes", -1)), int(attrs.get("edges", -1))
        if args.screenshot:
            out = Path(args.screenshot).resolve()
            out.parent.mkdir(parents=True, exist_ok=True)
            subprocess.run([*flags, f"--screenshot={out}", "--window-size=1280,1400", page.as_uri()],
                           capture_output=True, timeout=120, check=True)
    match = nodes == shown["entities_shown"] and edges == shown["relation_texts_shown"]
    print(f"RESULT view_nodes={nodes} view_edges={edges} run_entities={shown['entities_shown']} "
          f"run_relation_texts={shown['relation_texts_shown']} documents_shown={shown['documents_shown']} "
          f"of={shown['documents']} match={match}", flush=True)


if __name__ == "__main__":
    main()
