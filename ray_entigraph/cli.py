"""`ray-entigraph` command line: parse, validate, dispatch. No logic lives here."""

from __future__ import annotations

import argparse
import json
import logging
import os
import sys
import time
import traceback

from ray_entigraph.errors import EntiGraphError

DESCRIPTION = """\
EntiGraph synthetic continued pretraining on Ray.

Turns a small corpus into a large synthetic one (entities -> pair/triplet relation texts) with Ray Data
over model actors, on a laptop or a GPU cluster; only the config differs.

Every command takes  --config FILE_OR_PRESET  (default: the demo preset) plus any number of  key.sub=value
overrides, e.g.
  ray-entigraph synthesize --config demo output_dir=/tmp/run plan.max_triplets_per_doc=4
"""

EPILOG = """\
examples:
  ray-entigraph run --config configs/demo.yaml                 # synthesize -> train -> eval, resumable
  ray-entigraph validate --config configs/demo.yaml --print
  ray-entigraph synthesize --config configs/demo.yaml --dry-run
  ray-entigraph eval --config configs/demo.yaml eval.protocol=generative
  ray-entigraph sweep --config configs/demo.yaml sweep.num_budgets=3
  ray-entigraph ablate --config configs/demo.yaml output_dir=runs/ablation
  ray-entigraph synthesize --config configs/demo.yaml engine.kind=vllm engine.vllm.enforce_eager=true
  ray-entigraph status runs/demo --json
  ray-entigraph export runs/demo --to exports/demo [--push-to-hub ORG/NAME]
  ray-entigraph view runs/demo                                  # runs/demo/view.html

On a cluster: ray job submit --working-dir . -- ray-entigraph run --config ... output_dir=s3://bucket/run
"""


DEFAULT_PRESET = "demo"  # never the built-in (paper-scale) defaults: a preset sized for the machine at hand


def _add_verbosity(p: argparse.ArgumentParser) -> None:
    p.add_argument("-v", "--verbose", action="count", default=0,
                   help="more log output: -v INFO, -vv DEBUG (reaches every Ray worker of the run)")
    p.add_argument("-q", "--quiet", action="store_true", help="errors only")


def _add_config_args(p: argparse.ArgumentParser) -> None:
    _add_verbosity(p)
    p.add_argument("--config", "-c", metavar="FILE",
                   help="a YAML file or a preset installed with the package (demo, demo-gpu, hosted-api, "
                   "knowledge, paper-llama3-8b); default: the demo preset")
    p.add_argument("overrides", nargs="*", metavar="key.sub=value", help="config overrides, applied after the file")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="ray-entigraph", description=DESCRIPTION, epilog=EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--log-level", default="WARNING",
                        help="Python log level (default WARNING); -v / -q after the command do the same")
    parser.add_argument("--traceback", action="store_true",
                        help="show the full traceback of a user error too (other errors always show theirs)")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)

    p = sub.add_parser("synthesize", help="ingest -> extract entities -> plan -> synthesize relation texts",
                       description="Run the synthesis pipeline; re-running continues where committed output stops.")
    _add_config_args(p)
    p.add_argument("--dry-run", action="store_true",
                   help="count documents and tokens, estimate requests, tokens and cost; start no model")
    p.add_argument("--assume-entities", type=int, default=15, metavar="N",
                   help="dry run: entities per document where none were extracted yet (default 15)")
    p.add_argument("--sample", type=float, metavar="FRACTION",
                   help="dry run: read only this seeded share of the input (e.g. 0.01) and scale the counts up: an "
                   "estimate for a corpus too large to read whole")
    p.add_argument("--json", action="store_true", help="dry run: machine-readable output")

    p = sub.add_parser("validate", help="check a config (and its inputs) without starting anything",
                       description="Load and validate a config: unknown keys, wrong types, impossible combinations, "
                       "missing inputs. Exit status 0 when valid.")
    _add_config_args(p)
    p.add_argument("--print", action="store_true", help="print the resolved config as YAML")

    p = sub.add_parser("train", help="continued pretraining on the synthetic corpus with replay mixing (Ray Train)",
                       description="Pack the synthetic corpus (or the raw documents) and replay corpora into blocks, "
                       "mix them, train with Ray Train (DDP on CPU, FSDP on GPUs), checkpoint, export a Hugging "
                       "Face model and plot the metrics. Re-running resumes from the latest checkpoint.")
    _add_config_args(p)

    p = sub.add_parser("eval", help="closed-book QA and perplexity: what the model learned, what it forgot",
                       description="Evaluate the base model and the trained model (and any in eval.models): "
                       "closed-book accuracy on QuALITY-layout questions (option log-likelihood or generative "
                       "chain of thought), the base model with the document in context as a reference, perplexity "
                       "on the source documents (knowledge) and on held-out text (forgetting). Writes "
                       "<output_dir>/eval/report.{json,md} and PNG plots.")
    _add_config_args(p)

    p = sub.add_parser("run", help="synthesize -> train -> eval in one resumable command",
                       description="The whole run on one output_dir. Each finished step is recorded in "
                       "<output_dir>/_steps/; re-running the same command skips finished steps and resumes the "
                       "interrupted one from its committed work.")
    _add_config_args(p)
    p.add_argument("--until", choices=["synthesize", "train", "eval"], help="stop after this step")

    p = sub.add_parser("sweep", help="the paper's experiment: accuracy against synthetic tokens, with baselines",
                       description="Synthesize once, train on log-spaced subsets of the synthetic corpus "
                       "(sweep.budgets or sweep.num_budgets), train the Raw CPT and Rephrase baselines, evaluate "
                       "every model, and fit the paper's mixture-of-exponentials curve. Writes "
                       "<output_dir>/sweep/{sweep.json,accuracy_vs_tokens.png,eval/report.md}. Resumable like run.")
    _add_config_args(p)

    p = sub.add_parser("ablate", help="faithfulness ablation: filters and synthesis variants at equal tokens and steps",
                       description="Synthesize, then build the arms of ablation.variants (no filter, grounding "
                       "filter, sentence repair, dedup, a judge model's filter, free-form prompts, another "
                       "temperature, EntiGraph plus the documents, Raw CPT), train each at the same synthetic token "
                       "budget and the same number of steps, evaluate every model with bootstrap intervals, and "
                       "report each arm's paired change against the base model and against the unfiltered EntiGraph "
                       "arm (helped / hurt / within the interval). Writes "
                       "<output_dir>/ablation/{ablation.json,accuracy_vs_tokens.png,eval/report.md}. "
                       "Resumable like run.")
    _add_config_args(p)

    p = sub.add_parser("export", help="the current corpus as Parquet with a dataset card (and the model with a "
                       "model card); optionally pushed to the Hugging Face Hub",
                       description="Write <to>/dataset (Parquet of the run's current rows, each with a grounding "
                       "score, and a README.md dataset card that `datasets` reads) and, when the run trained a "
                       "model, <to>/model (the model and a README.md model card with the evaluation table). "
                       "--push-to-hub uploads exactly <to>/dataset; --push-model-to-hub uploads <to>/model.")
    _add_verbosity(p)
    p.add_argument("output_dir", help="the run's output_dir")
    p.add_argument("--to", required=True, metavar="DIR_OR_URL", help="where to write the export")
    p.add_argument("--stage", choices=["synthetic", "curated"],
                   help="which corpus (default: curated when the run curates, else synthetic)")
    p.add_argument("--push-to-hub", metavar="ORG/NAME", help="upload <to>/dataset to this Hub dataset repository")
    p.add_argument("--push-model-to-hub", metavar="ORG/NAME", help="upload <to>/model to this Hub model repository")
    p.add_argument("--private", action="store_true", help="create the Hub repositories as private")
    p.add_argument("--no-model", action="store_true", help="export the corpus only")

    p = sub.add_parser("view", help="a self-contained HTML report of a run: entity graphs, texts with unsupported "
                       "words marked, counts and plots",
                       description="Write one HTML file (no server, no network) showing, per document, its entity "
                       "graph (entities as nodes, each generated relation text as an edge), the texts with the "
                       "words their document does not support marked, and the run's counts and plots. A large "
                       "run is sampled (--max-documents, seeded), and the page says how.")
    _add_verbosity(p)
    p.add_argument("output_dir", help="the run's output_dir")
    p.add_argument("--to", metavar="FILE_OR_URL", help="where to write it (default: <output_dir>/view.html)")
    p.add_argument("--max-documents", type=int, default=12, metavar="N", help="documents shown (default 12)")

    p = sub.add_parser("status", help="print a run's state from its output directory (no cluster needed)",
                       description="Per step (synthesize, train, eval): done, done with failures, running, stale "
                       "(its process is gone), failed or not started, with training's step k of N, loss and ETA "
                       "and evaluation's models done; per synthesis stage: shards, requests done and failed, "
                       "tokens. Read from storage alone; exit status 2 for a folder that holds no run.")
    _add_verbosity(p)
    p.add_argument("output_dir", help="the run's output_dir")
    p.add_argument("--json", action="store_true", help="machine-readable output")
    return parser


def _load(args):
    from ray_entigraph import storage
    from ray_entigraph.config import load_config  # lazy: --help stays fast (pydantic models are built on import)

    config = load_config(args.config or DEFAULT_PRESET, args.overrides)
    storage.configure(config.storage.settings())  # before the first object-store request of this command
    return config


def cmd_validate(args) -> int:
    from ray_entigraph.workflows.preflight import preflight  # lazy: --help stays fast

    config = _load(args)
    ctx, warnings = preflight(config, "validate")
    files = ctx.input_files
    for warning in warnings:
        print(f"warning: {warning}", file=sys.stderr)
    if args.print:
        print(config.to_yaml(), end="")
    print(f"config ok ({args.config or DEFAULT_PRESET}): {len(files)} input file(s), output_dir={config.output_dir}",
          file=sys.stderr)
    return 0


def cmd_synthesize(args) -> int:
    config = _load(args)
    if args.dry_run:
        from ray_entigraph.estimate import dry_run  # lazy: --help stays fast (pulls in the stages, pyarrow, fsspec)

        est = dry_run(config, args.assume_entities, sample=args.sample)
        if args.json:
            print(json.dumps(est, indent=2, sort_keys=True))
        else:
            print("ray-entigraph synthesize --dry-run (no model started)" + (
                f"; estimated from a {args.sample:g} sample of the input" if args.sample else ""))
            for key, value in est.items():
                shown = "-" if value is None else (f"{value:,.4f}" if isinstance(value, float) else f"{value:,}")
                print(f"  {key:<36} {shown}")
        return 0
    from ray_entigraph.pipeline import synthesize  # lazy: --help stays fast (pulls in the stages, pyarrow, fsspec)

    started = time.time()
    summary = synthesize(config)
    _print_done("synthesize", summary.lines(), f"{time.time() - started:.1f}s (including Ray start-up)")
    return 0


def _print_done(command: str, lines: list[str], wall: str) -> None:
    print(f"\nray-entigraph {command}: done")
    for line in lines + [f"wall time        {wall}"]:
        print("  " + line)


def cmd_train(args) -> int:
    from ray_entigraph.train.launch import run_train  # lazy: --help stays fast (pulls in training, pyarrow, fsspec)

    config = _load(args)
    summary = run_train(config)
    _print_done("train", summary.lines(), f"{summary.wall_s:.1f}s")
    return 0


def cmd_eval(args) -> int:
    from ray_entigraph.eval.launch import run_eval  # lazy: --help stays fast (pulls in evaluation, pyarrow, fsspec)

    summary = run_eval(_load(args))
    _print_done("eval", summary.lines(), f"{summary.wall_s:.1f}s")
    return 0


def cmd_run(args) -> int:
    from ray_entigraph.workflows import run  # lazy: --help stays fast (pulls in the whole pipeline)

    config = _load(args)
    started = time.time()
    results = run(config, until=args.until)
    lines = [f"{step:<16} {r['wall_s']:.0f}s" for step, r in results.items()]
    _print_done("run", lines + [f"output           {config.output_dir}"], f"{time.time() - started:.1f}s")
    return 0


def cmd_sweep(args) -> int:
    from ray_entigraph.workflows import sweep  # lazy: --help stays fast (pulls in the whole pipeline)

    summary = sweep(_load(args))
    _print_done("sweep", summary.lines(), f"{summary.wall_s:.1f}s")
    return 0


def cmd_ablate(args) -> int:
    from ray_entigraph.workflows import ablate  # lazy: --help stays fast (pulls in the whole pipeline)

    summary = ablate(_load(args))
    _print_done("ablate", summary.lines(), f"{summary.wall_s:.1f}s")
    return 0


def cmd_export(args) -> int:
    from ray_entigraph.publish import export  # lazy: --help stays fast

    started = time.time()
    summary = export(args.output_dir, args.to, stage=args.stage, push_to_hub=args.push_to_hub,
                     push_model_to_hub=args.push_model_to_hub, private=args.private, include_model=not args.no_model)
    _print_done("export", summary.lines(), f"{time.time() - started:.1f}s")
    return 0


def cmd_view(args) -> int:
    from ray_entigraph.view import build_view  # lazy: --help stays fast

    started = time.time()
    shown = build_view(args.output_dir, args.to, max_documents=args.max_documents)
    _print_done("view", [f"report           {shown['url']}",
                         f"shown            {shown['documents_shown']} of {shown['documents']} documents, "
                         f"{shown['entities_shown']} entities, {shown['relation_texts_shown']} relation texts"],
                f"{time.time() - started:.1f}s")
    return 0


def cmd_status(args) -> int:
    from ray_entigraph.status import run_status, step_lines  # lazy: --help stays fast

    state = run_status(args.output_dir)
    if args.json:
        print(json.dumps(state, indent=2, sort_keys=True, default=str))
        return 0
    lease = state["lease"]
    who = ""
    if lease:
        who = (f" ({lease.get('command')} on {lease.get('host')} pid {lease.get('pid')}, last heartbeat "
               f"{lease['heartbeat_age_s']:.0f}s ago{'' if lease['alive'] else ': gone'})")
    print(f"run {args.output_dir}: {state['state']}{who}")
    for line in step_lines(state):
        print(line)
    run = state["run"]
    if run.get("error"):
        print(f"  error: {run['error']}")
    print(f"  {'stage':<10} {'shards':>6} {'ok':>8} {'failed':>7} {'prompt tok':>11} {'cached':>7}"
          f" {'generated tok':>13} {'retries':>7} {'cost $':>8}   last invocation")
    for name, st in state["stages"].items():
        cost = st.get("estimated_cost_usd")
        cached = f"{st['num_cached_tokens'] / st['num_prompt_tokens']:.0%}" if st["num_prompt_tokens"] else "-"
        line = (f"  {name:<10} {st['num_shards']:>6} {st['num_ok']:>8} {st['num_failed']:>7} "
                f"{st['num_prompt_tokens']:>11} {cached:>7} {st['num_generated_tokens']:>13} {st['num_retries']:>7} "
                f"{'-' if cost is None else f'{cost:.4f}':>8}")
        if "this_run" in st:
            r = st["this_run"]
            rate = r.get("generated_tokens_per_s")
            line += (f"   {r['done']}/{r['expected']} done, {r['failed']} failed, {r['pending']} pending"
                     + (f", {rate:.1f} gen tok/s" if rate else ""))
        print(line)
    return 0


COMMANDS = {"validate": cmd_validate, "synthesize": cmd_synthesize, "train": cmd_train, "eval": cmd_eval,
            "run": cmd_run, "sweep": cmd_sweep, "ablate": cmd_ablate, "export": cmd_export, "view": cmd_view,
            "status": cmd_status}


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    level = args.log_level.upper()
    if getattr(args, "quiet", False):
        level = "ERROR"
    elif getattr(args, "verbose", 0):
        level = "DEBUG" if args.verbose > 1 else "INFO"
    from ray_entigraph.runtime import LOG_LEVEL_ENV  # lazy: --help (which exits above) stays fast

    os.environ[LOG_LEVEL_ENV] = level  # init_ray hands it to every worker of the run
    logging.basicConfig(level=level, format="%(levelname)s %(name)s: %(message)s")
    try:
        return COMMANDS[args.command](args)
    except EntiGraphError as exc:  # a user error: one line with its fix; anything else keeps its traceback
        if args.traceback:
            traceback.print_exc()
        print(f"ray-entigraph {args.command}: error: {exc}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
