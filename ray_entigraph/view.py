"""`ray-entigraph view`: one self-contained HTML file that shows what a run made (no server, no network).

Per document: its entity graph (the document's entities as nodes; each generated pair, triplet or
question-and-answer text as an edge joining the entities it was asked about, a triplet as a small hub), and
the texts with the words their document does not support highlighted (text/grounding.py, as `curate` scores
them). Above them: the run's counts and the run's plots (evaluation and training PNGs, inlined).

A large run is sampled: at most `max_documents` documents, the first ones in a seeded hash order of their ids
(the same documents on every call), read partition by partition; the report says how many of how many it
shows. Everything the page needs (data, script, images) is inside the one file.
"""

from __future__ import annotations

import base64
import hashlib
import html
import json

from ray_entigraph import storage
from ray_entigraph.errors import EntiGraphError
from ray_entigraph.version import __version__

RELATION_KINDS = ("pair", "triplet", "qa")


def _rank(seed: int, doc_id: str) -> str:
    return hashlib.sha256(f"{seed}:{doc_id}".encode()).hexdigest()


def sample_documents(corpus, max_documents: int, seed: int) -> tuple[list[tuple[int, str]], int]:
    """(partition, doc_id) of the sampled documents (the `max_documents` smallest seeded hashes of their ids),
    and how many current documents there are. Reads the doc_id column of each partition once."""
    from ray_entigraph.corpus import read_documents

    ranked: list[tuple[str, int, str]] = []
    total = 0
    for p in range(corpus.num_partitions):
        for d in read_documents(corpus, p, ["doc_id"]):
            total += 1
            ranked.append((_rank(seed, d["doc_id"]), p, d["doc_id"]))
            if len(ranked) > 4 * max_documents:  # keep memory at O(max_documents)
                ranked = sorted(ranked)[:max_documents]
    return [(p, doc_id) for _, p, doc_id in sorted(ranked)[:max_documents]], total


def document_views(corpus, sample: list[tuple[int, str]]) -> list[dict]:
    """For each sampled document: title, entities, and its relation texts with grounding and unsupported units."""
    from ray_entigraph.corpus import read_documents, read_entities, read_synthetic
    from ray_entigraph.stages.curate import forced_prefix
    from ray_entigraph.text.grounding import DocumentIndex, score_text

    wanted: dict[int, list[str]] = {}
    for p, doc_id in sample:
        wanted.setdefault(p, []).append(doc_id)
    views: dict[str, dict] = {}
    for p, ids in wanted.items():
        docs = {d["doc_id"]: d for d in read_documents(corpus, p, ["doc_id", "title", "text"]) if d["doc_id"] in ids}
        ents = {e["doc_id"]: e for e in read_entities(corpus, p, list(docs.values()))} if corpus.entigraph else {}
        rows = read_synthetic(corpus, p, ["doc_id", "kind", "entities", "text", "title", "task_id", "error"])
        for doc_id, doc in docs.items():
            index = DocumentIndex.from_text(doc["text"], title=doc["title"])
            entities = list((ents.get(doc_id) or {}).get("entities") or [])
            texts = []
            for row in rows:
                if row["doc_id"] != doc_id or row.get("error") or not row.get("text"):
                    continue
                if row["kind"] not in RELATION_KINDS:
                    continue
                g = score_text(row["text"], index, skip_prefix=forced_prefix(corpus.prompts, row))
                texts.append({"kind": row["kind"], "entities": list(row["entities"] or []), "text": row["text"],
                              "grounding": round(g.score, 3), "unsupported": g.unsupported})
                for e in row["entities"] or []:
                    if e not in entities:  # an entity a text was asked about is a node even if the list lost it
                        entities.append(e)
            views[doc_id] = {"doc_id": doc_id, "title": doc["title"], "entities": entities, "texts": texts,
                             "words": len(doc["text"].split())}
    return [views[doc_id] for _, doc_id in sample if doc_id in views]


def _png(url: str) -> str | None:
    if not storage.exists(url):
        return None
    return "data:image/png;base64," + base64.b64encode(storage.read_bytes(url)).decode()


def render(data: dict) -> str:
    """The HTML page: data as JSON, drawn by an inline script into SVG (no library, no network)."""
    payload = json.dumps(data).replace("</", "<\\/")
    title = html.escape(f"ray_entigraph run: {data['output_dir']}")
    return _TEMPLATE.replace("__TITLE__", title).replace("__DATA__", payload)


def build_view(output_dir: str, to: str | None = None, *, max_documents: int = 12) -> dict:
    """Write the report (default <output_dir>/view.html); returns what it shows: its url and counts."""
    from ray_entigraph import api
    from ray_entigraph.layout import Layout, train_url

    if max_documents < 1:
        raise EntiGraphError(f"max_documents={max_documents}: show at least one document. Fix: pass 1 or more.")
    config = api.run_config(output_dir)
    corpus, _ = api.corpus_reader(config)
    sample, total = sample_documents(corpus, max_documents, config.seed)
    docs = document_views(corpus, sample)
    layout = Layout(config.output_dir)
    plots = {name: _png(url) for name, url in (
        ("closed-book accuracy", layout.eval_url("accuracy.png")),
        ("perplexity", layout.eval_url("perplexity.png")),
        ("training", train_url(config, "metrics.png")))}
    synthetic = corpus.synthetic.summary() or {}
    if synthetic.get("identity") != corpus.synthetic_identity:
        synthetic = {}  # another config's summary: its counts are not this run's
    counts = {"documents": total, "documents_shown": len(docs),
              "entities_shown": sum(len(d["entities"]) for d in docs),
              "relation_texts_shown": sum(len(d["texts"]) for d in docs),
              "synthetic_rows": (synthetic.get("stats") or {}).get("num_rows"),
              "generator": config.model.name, "prompt_version": corpus.prompts.version}
    data = {"output_dir": config.output_dir, "version": __version__, "counts": counts,
            "sampling": (f"{len(docs)} of {total} documents, the first in a hash order of their ids seeded with "
                         f"the run's seed ({config.seed}); every relation text of each shown document")
            if total > len(docs) else f"all {total} documents",
            "plots": {k: v for k, v in plots.items() if v}, "documents": docs}
    url = to or storage.join(config.output_dir, "view.html")
    storage.write_text(url, render(data))
    return {"url": url, **counts}


_TEMPLATE = r"""<!doctype html>
<html lang="en"><head><meta charset="utf-8"><title>__TITLE__</title>
<style>
body{font:14px/1.45 system-ui,-apple-system,Segoe UI,sans-serif;margin:0;color:#1d232b;background:#f6f7f9}
header{background:#20303f;color:#fff;padding:14px 24px}header h1{font-size:18px;margin:0}
header p{margin:4px 0 0;color:#c6d2de;font-size:12px}
main{padding:16px 24px;max-width:1200px}
.counts{display:flex;flex-wrap:wrap;gap:10px;margin-bottom:14px}
.count{background:#fff;border:1px solid #dde2e8;border-radius:6px;padding:8px 12px}
.count b{display:block;font-size:18px}.count span{color:#5b6775;font-size:12px}
.plots{display:flex;flex-wrap:wrap;gap:12px}.plots figure{margin:0;background:#fff;border:1px solid #dde2e8;
border-radius:6px;padding:8px}.plots img{max-width:360px;display:block}
.plots figcaption{font-size:12px;color:#5b6775}
section.doc{background:#fff;border:1px solid #dde2e8;border-radius:8px;margin:16px 0;padding:12px 16px}
section.doc h2{font-size:16px;margin:0 0 6px}.meta{color:#5b6775;font-size:12px}
.row{display:flex;gap:16px;flex-wrap:wrap}svg{background:#fbfcfd;border:1px solid #e6e9ee;border-radius:6px}
.node circle{fill:#4C72B0}.node text{font-size:11px;fill:#1d232b}
.edge line{stroke:#8aa0b8;stroke-width:1.5}.edge.triplet circle{fill:#DD8452}.edge.qa line{stroke:#55A868}
.edge:hover line{stroke:#C44E52;stroke-width:3}
.texts{flex:1;min-width:380px;max-height:420px;overflow:auto}
.text{border-top:1px solid #eef0f3;padding:6px 0;white-space:pre-wrap;font-size:13px}
.text .tag{font-size:11px;color:#fff;border-radius:3px;padding:1px 5px;margin-right:6px}
.tag.pair{background:#4C72B0}.tag.triplet{background:#DD8452}.tag.qa{background:#55A868}
mark{background:#ffd9d6;color:#8a1c13;border-radius:2px}
</style></head><body>
<header><h1>__TITLE__</h1><p id="sampling"></p></header>
<main><div class="counts" id="counts"></div><div class="plots" id="plots"></div><div id="docs"></div>
<p class="meta">Nodes: the document's entities. Edges: one per generated relation text, joining the entities it
was asked about (a triplet joins three through an orange hub; green edges are question-and-answer texts). Marked
words: what the text says that its document does not contain (grounding, 1.0 = fully supported).</p></main>
<script id="data" type="application/json">__DATA__</script>
<script>
const D = JSON.parse(document.getElementById('data').textContent);
const NS = 'http://www.w3.org/2000/svg';
const el = (tag, attrs, parent) => { const e = document.createElementNS(NS, tag);
  for (const k in attrs) e.setAttribute(k, attrs[k]); if (parent) parent.appendChild(e); return e; };
const esc = s => s.replace(/[&<>"]/g, c => ({'&':'&amp;','<':'&lt;','>':'&gt;','"':'&quot;'}[c]));
function highlight(text, units) {
  let out = esc(text);
  [...new Set(units)].sort((a, b) => b.length - a.length).forEach(u => {
    const e = esc(u).replace(/[.*+?^${}()|[\]\\]/g, '\\$&');
    out = out.replace(new RegExp('(^|[^\\w>])(' + e + ')(?![\\w<])', 'g'), '$1<mark>$2</mark>'); });
  return out; }
document.getElementById('sampling').textContent = 'Shown: ' + D.sampling + '. ray_entigraph ' + D.version + '.';
const C = D.counts, counts = document.getElementById('counts');
[['documents', C.documents], ['documents shown', C.documents_shown], ['entities shown', C.entities_shown],
 ['relation texts shown', C.relation_texts_shown], ['synthetic rows', C.synthetic_rows ?? '-'],
 ['generator', C.generator], ['prompt version', C.prompt_version]].forEach(([k, v]) => {
  const d = document.createElement('div'); d.className = 'count';
  d.innerHTML = '<b>' + esc(String(v)) + '</b><span>' + k + '</span>'; counts.appendChild(d); });
const plots = document.getElementById('plots');
for (const [name, src] of Object.entries(D.plots)) {
  const f = document.createElement('figure'); f.innerHTML = '<img alt="' + name + '" src="' + src + '"><figcaption>'
    + name + '</figcaption>'; plots.appendChild(f); }
const docs = document.getElementById('docs');
D.documents.forEach((doc, di) => {
  const s = document.createElement('section'); s.className = 'doc'; s.dataset.doc = doc.doc_id;
  const mean = doc.texts.length ? doc.texts.reduce((a, t) => a + t.grounding, 0) / doc.texts.length : null;
  s.innerHTML = '<h2>' + esc(doc.title || doc.doc_id) + '</h2><div class="meta">' + doc.words + ' words, '
    + doc.entities.length + ' entities, ' + doc.texts.length + ' relation texts'
    + (mean === null ? '' : ', mean grounding ' + mean.toFixed(2)) + '</div>';
  const row = document.createElement('div'); row.className = 'row'; s.appendChild(row);
  const W = 480, H = 400, RX = 105, RY = 165;
  const svg = el('svg', {width: W, height: H, viewBox: '0 0 ' + W + ' ' + H}, row);
  const pos = {}; const n = Math.max(doc.entities.length, 1);  // an ellipse leaves room for labels at the sides
  doc.entities.forEach((e, i) => { const a = 2 * Math.PI * i / n - Math.PI / 2;
    pos[e] = [W / 2 + RX * Math.cos(a), H / 2 + RY * Math.sin(a)]; });
  const edges = el('g', {}, svg), nodes = el('g', {}, svg);
  doc.texts.forEach((t, ti) => {
    const g = el('g', {class: 'edge ' + t.kind, 'data-text': ti}, edges);
    el('title', {}, g).textContent = t.kind + ': ' + t.entities.join(' / ') + ' (grounding ' + t.grounding + ')';
    const pts = t.entities.filter(e => pos[e]).map(e => pos[e]);
    if (t.entities.length > 2 && pts.length) {
      const cx = pts.reduce((a, p) => a + p[0], 0) / pts.length, cy = pts.reduce((a, p) => a + p[1], 0) / pts.length;
      pts.forEach(p => el('line', {x1: cx, y1: cy, x2: p[0], y2: p[1]}, g)); el('circle', {cx, cy, r: 4}, g);
    } else if (pts.length === 2) { el('line', {x1: pts[0][0], y1: pts[0][1], x2: pts[1][0], y2: pts[1][1]}, g); }
    g.addEventListener('click', () => document.getElementById('t' + di + '-' + ti).scrollIntoView({block: 'nearest'}));
  });
  doc.entities.forEach(e => { const [x, y] = pos[e], g = el('g', {class: 'node'}, nodes);
    el('circle', {cx: x, cy: y, r: 6}, g); const left = x < W / 2;
    const t = el('text', {x: x + (left ? -9 : 9), y: y + 4, 'text-anchor': left ? 'end' : 'start'}, g);
    t.textContent = e.length > 20 ? e.slice(0, 19) + '…' : e; el('title', {}, g).textContent = e; });
  const texts = document.createElement('div'); texts.className = 'texts'; row.appendChild(texts);
  doc.texts.forEach((t, ti) => { const d = document.createElement('div'); d.className = 'text';
    d.id = 't' + di + '-' + ti;
    d.innerHTML = '<span class="tag ' + t.kind + '">' + t.kind + '</span><b>' + esc(t.entities.join(' / '))
      + '</b> <span class="meta">grounding ' + t.grounding.toFixed(2) + '</span>\n' + highlight(t.text, t.unsupported);
    texts.appendChild(d); });
  docs.appendChild(s);
});
document.body.dataset.nodes = document.querySelectorAll('g.node').length;
document.body.dataset.edges = document.querySelectorAll('g.edge').length;
</script></body></html>
"""
