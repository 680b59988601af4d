"""`pythia-dynamics`: demo | train-suite | sweep | audit | verify | report | formation | events | experiment | push |
pull | query | steps | models | analyses | svd-strings.

Commands that build no model (--help, steps on a Pythia name, models, analyses, argument errors) answer
without importing torch or TransformerLens: each command imports what it needs when it runs.
"""

from __future__ import annotations

import argparse
import dataclasses
import logging
import sys
import textwrap
import typing
from pathlib import Path

__all__ = ["main"]

log = logging.getLogger("pythia_dynamics")


def main(argv: list[str] | None = None) -> int:
    parser = _parser()
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO if args.verbose else logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    try:
        return args.run(args) or 0
    except (ValueError, FileNotFoundError, RuntimeError) as error:
        # Bad input: say what was wrong and what is valid, without a traceback.
        print(f"pythia-dynamics {args.command}: error: {error}", file=sys.stderr)
        return 2


SOURCE_HELP = ("a known model (pythia-70m, olmo-1b, alias-gpt2-small-x21 ...: `pythia-dynamics models`), "
               "hub:ORG/NAME, a local suite folder, or 'mini-pythia'")


def _add_source_naming_options(parser: argparse.ArgumentParser) -> None:
    """How a Hub model's branches name checkpoints, where the suite's own naming does not apply."""
    parser.add_argument("--revision-pattern", default=None,
                        help="branch names of the checkpoints, e.g. 'ckpt_{step}', 'checkpoint-{step}', "
                             "'step{step}-tokens{tokens}B' (default: the suite's; for hub:ORG/NAME the known "
                             "conventions are tried); see docs/suites.md")
    parser.add_argument("--series", default=None,
                        help="which series of a suite whose series share step numbers, e.g. stage2-ingredient1 "
                             "for OLMo 2 (default: the main pre-training run)")  # fmt: skip


def _store_location(text: str) -> str | Path:
    """A store argument: a URL (s3://bucket/prefix, memory://...) stays a str, anything else is a folder."""
    return text if "://" in text else Path(text)


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="pythia-dynamics", description=__doc__)
    parser.add_argument("-v", "--verbose", action="store_true", help="log progress details")
    commands = parser.add_subparsers(dest="command", required=True)

    demo = commands.add_parser("demo", help="train (or reuse) the mini suite, sweep it, write report.html")
    demo.add_argument("--out", type=Path, default=Path("runs/demo"), help="folder for the store and report")
    demo.add_argument("--tiny", action="store_true", help="a seconds-long suite instead of the embedded default")
    demo.set_defaults(run=_demo)

    train = commands.add_parser("train-suite", help="train a mini Pythia-recipe checkpoint suite")
    train.add_argument("out", type=Path, help="folder to write the suite into (the local-suite layout)")
    train.add_argument("--tiny", action="store_true", help="the seconds-long configuration the tests use")
    _add_config_options(train)
    train.set_defaults(run=_train_suite)

    sweep = commands.add_parser("sweep", help="run analyses over a model's checkpoints into a results store")
    sweep.add_argument("source", help=SOURCE_HELP)
    sweep.add_argument("--out", type=_store_location, required=True,
                       help="the results store: a folder or a URL such as s3://bucket/prefix (created if missing)")
    sweep.add_argument("--steps", default=None, help="step spec (default: all); see `pythia-dynamics steps --help`")
    _add_source_naming_options(sweep)
    sweep.add_argument("--analyses", default=None, help="comma-separated analysis names (default: all registered)")
    sweep.add_argument("--device", default="cpu", help="cpu or cuda (default cpu)")
    sweep.add_argument("--backend", default="auto", choices=["auto", "hooked", "bridge"])
    sweep.add_argument("--processed", action="store_true", help="fold layer norms and centre weights first")
    sweep.add_argument("--dtype", default="float32", help="the model's dtype while analysed (default float32)")
    sweep.add_argument("--recompute", default=None, metavar="ANALYSES",
                       help="comma-separated analyses to recompute at every step they are stored at, replacing them "
                            "(after a new analysis version, or to change their load options)")  # fmt: skip
    sweep.add_argument("--cache-policy", default="keep", choices=["keep", "delete-after-use"],
                       help="Hub sources: keep downloaded revisions, or delete each after use")  # fmt: skip
    sweep.add_argument("--chunk-size", type=int, default=None,
                       help="run the evaluation batch this many sequences at a time (memory; results do not change)")  # fmt: skip
    sweep.add_argument("--no-prefetch", action="store_true",
                       help="read each checkpoint only when its turn comes (default: the next is read while one is analysed)")
    sweep.add_argument("--eval-text", type=Path, help="a text file to draw the evaluation batch from")
    sweep.add_argument("--eval-tokens", type=Path, help="token ids for the evaluation batch (.npy, or one sequence a line)")
    sweep.add_argument("--no-audit", action="store_true", help="skip the checkpoint integrity audit (docs/audit.md)")
    sweep.add_argument("--exclude-suspect", action="store_true",
                       help="leave out the checkpoints the integrity audit calls suspect (audited first, in a pre-pass)")
    sweep.add_argument("--reuse", default=None, metavar="ORG/NAME",
                       help="take results from this published store (or store folder) where checkpoint content and "
                            "provenance match, instead of computing them (docs/sharing.md)")  # fmt: skip
    sweep.add_argument("--executor", default="local", choices=["local", "ray"],
                       help="where checkpoints are analysed: this process, or the workers of a Ray cluster (docs/scale.md)")
    sweep.add_argument("--address", default=None,
                       help="with --executor ray: the cluster to join (default: the running one, else a local one)")
    sweep.add_argument("--threads-per-worker", type=int, default=None,
                       help="with --executor ray: torch threads (and CPUs requested) per worker (default 1)")
    sweep.set_defaults(run=_sweep)

    push = commands.add_parser("push", help="publish a store as a Hugging Face dataset repository")
    push.add_argument("store", type=_store_location)
    push.add_argument("repo_id", metavar="ORG/NAME")
    push.add_argument("--private", action="store_true", help="create the repository private")
    push.add_argument("--dry-run", type=Path, default=None, metavar="FOLDER",
                      help="write the folder that would be uploaded, upload nothing")  # fmt: skip
    push.set_defaults(run=_push)

    pull = commands.add_parser("pull", help="copy a published store from the Hub (or its cache) into a folder")
    pull.add_argument("repo_id", metavar="ORG/NAME")
    pull.add_argument("--out", type=Path, required=True, help="a new or empty folder")
    pull.add_argument("--revision", default=None, help="a branch, tag or commit of the dataset repository")
    pull.set_defaults(run=_pull)

    query = commands.add_parser("query", help="SQL (DuckDB) over a store's tables `scalars` and `arrays`")
    query.add_argument("store", help="a store folder or URL (s3://...), or hf://datasets/ORG/NAME")
    query.add_argument("sql", help='e.g. "SELECT analysis, count(*) FROM scalars GROUP BY analysis"')
    query.add_argument("--csv", type=Path, default=None, help="also write the result to this CSV file")
    query.set_defaults(run=_query)

    audit = commands.add_parser("audit", help="check a suite's checkpoints for duplicates, mixed shards, breaks, gaps")
    audit.add_argument("source", help=SOURCE_HELP)
    audit.add_argument("--steps", default=None, help="step spec (default: all); see `pythia-dynamics steps --help`")
    audit.add_argument("--out", type=_store_location, default=None, help="a results store (folder or URL) to write the audit rows into")
    audit.add_argument("--hub", action="store_true", help="also compare the Hub's file hashes across all branches (online)")
    audit.add_argument("--hub-listing", type=Path, default=None,
                       help="compare the file hashes of a recorded branch listing (JSON: branch -> tree entries) instead")
    audit.add_argument("--exact", action="store_true", help="distance features from every entry, not a fixed sample")
    audit.set_defaults(run=_audit)

    verify = commands.add_parser("verify", help="read every result of a store and list what is damaged or mixed")
    verify.add_argument("store", type=_store_location, help="a store folder or URL (s3://...)")
    verify.add_argument("--repair", action="store_true", help="delete damaged results, so the next sweep recomputes them")
    verify.set_defaults(run=_verify)

    report = commands.add_parser("report", help="write the HTML report for one or more stores")
    report.add_argument("stores", nargs="+", type=_store_location, help="store folders or URLs (s3://...)")
    report.add_argument("--out", type=Path, default=Path("report.html"))
    report.set_defaults(run=_report)

    formation = commands.add_parser("formation", help="when each head score and massive activation formed, from a store")
    formation.add_argument("store", type=_store_location)
    formation.add_argument("--stat", action="append", help="only these stats (repeatable), e.g. induction_score")
    formation.add_argument("--top", type=int, default=20, help="the series that changed most (default 20; 0: all)")
    formation.add_argument("--csv", type=Path, help="also write the whole table to this CSV file")
    formation.set_defaults(run=_formation)

    events = commands.add_parser("events", help="change points, ranked events and phases of every scalar series of stores")
    events.add_argument("stores", nargs="+", type=_store_location,
                        help="one or more stores, folders or URLs (several: events aligned across models)")
    events.add_argument("--model", default=None, help="only this model")
    events.add_argument("--top", type=int, default=10, help="events shown per model (default 10)")
    events.add_argument("--fit", action="store_true", help="also fit trajectory models to every series and print the held-out error "
                        "(per group and family; --out writes every series' row)")
    events.add_argument("--out", type=Path, default=None, help="also write every table to this JSON file")
    events.set_defaults(run=_events)

    experiment = commands.add_parser("experiment", help="run a hypothesis-lab preset: train paired suites, sweep, "
                                     "print the verdict table (docs/hypotheses.md)")
    experiment.add_argument("name", nargs="?", default=None, help="a preset name, or 'all' (--list shows them)")
    experiment.add_argument("--list", action="store_true", help="list the presets and their questions")
    experiment.add_argument("--seeds", type=int, default=3, help="seeds per level (default 3)")
    experiment.add_argument("--tiny", action="store_true", help="tiny suites (seconds): a smoke check, never an answer")
    experiment.add_argument("--out", type=Path, default=Path("runs/lab"), help="folder of the experiments (default runs/lab)")
    experiment.add_argument("--no-report", action="store_true", help="skip the HTML comparison report")
    experiment.add_argument("--update-docs", type=Path, default=None, metavar="MD",
                            help="after running, rewrite the measured section of this file (docs/hypotheses.md) "
                                 "from every full-size experiment under --out")
    experiment.set_defaults(run=_experiment)

    from pythia_dynamics.schedule import STEP_SPEC_HELP

    steps = commands.add_parser(
        "steps", help="list the checkpoints a step spec selects",
        description=STEP_SPEC_HELP, formatter_class=argparse.RawDescriptionHelpFormatter,
    )  # fmt: skip
    steps.add_argument("source", help=SOURCE_HELP)
    steps.add_argument("spec", nargs="?", default=None)
    _add_source_naming_options(steps)
    steps.set_defaults(run=_steps)

    models = commands.add_parser("models", help="list the checkpoint suites that can be named (Pythia, OLMo, ...), "
                                                "their revision naming, and the embedded suite")
    models.set_defaults(run=_models)

    analyses = commands.add_parser("analyses", help="list the registered analyses")
    analyses.set_defaults(run=_analyses)

    svd = commands.add_parser("svd-strings", help="print one matrix's SVD directions as top tokens, for one checkpoint")
    svd.add_argument("source", help=SOURCE_HELP)
    svd.add_argument("--step", type=int, required=True, help="the checkpoint's training step")
    svd.add_argument("--layer", type=int, required=True, help="block index, from 0")
    svd.add_argument("--kind", required=True, choices=["ov", "mlp_in", "mlp_out", "mlp_gate"],
                     help="ov: W_V W_O of a head; mlp_in: diag(ln2.w) W_in (input side); mlp_out: W_out; "
                          "mlp_gate: diag(ln2.w) W_gate (gated MLPs)")  # fmt: skip
    svd.add_argument("--head", type=int, default=None, help="attention head (required for --kind ov)")
    svd.add_argument("-k", type=int, default=20, help="tokens per direction (default 20)")
    svd.add_argument("-n", type=int, default=30, help="directions, largest singular value first (default 30)")
    svd.add_argument("--no-negative", action="store_true", help="leave out each direction's most negative tokens")
    svd.add_argument("--backend", default="auto", choices=["auto", "hooked", "bridge"])
    svd.set_defaults(run=_svd_strings)
    return parser


def _experiment(args) -> int:
    from pythia_dynamics.lab.presets import PRESETS  # no torch until a suite trains

    if args.list or args.name is None:
        for preset in PRESETS.values():
            print(f"{preset.name:17} {preset.question}")
        if not args.list:
            print("pythia-dynamics experiment: error: name a preset above, or 'all'", file=sys.stderr)
        return 0 if args.list else 2
    names = list(PRESETS) if args.name == "all" else [args.name]
    from pythia_dynamics.lab import get_preset, run_experiment

    for name in names:
        get_preset(name)  # an unknown name fails before anything trains
    for name in names:
        command = f"pythia-dynamics experiment {name} --seeds {args.seeds}{' --tiny' if args.tiny else ''} --out {args.out}"
        result = run_experiment(name, seeds=args.seeds, tiny=args.tiny, out=args.out, report=not args.no_report,
                                progress=True, command=command)  # fmt: skip
        print(result.table())
        print(f"\nwritten: {result.folder}/verdicts.md" + ("" if args.no_report else f", {result.folder}/report.html"))
    if args.update_docs is not None:
        from pythia_dynamics.lab.docs import update_docs

        update_docs(args.out, args.update_docs)
        print(f"rewrote the measured section of {args.update_docs}")
    return 0


def _add_config_options(parser: argparse.ArgumentParser) -> None:
    from pythia_dynamics.train.config import SuiteConfig  # no torch: the parser is built for every command

    hints = typing.get_type_hints(SuiteConfig)
    group = parser.add_argument_group("suite configuration (defaults: the embedded suite's)")
    for f in dataclasses.fields(SuiteConfig):
        kind = hints[f.name]
        flag = "--" + f.name.replace("_", "-")
        if kind is bool:
            group.add_argument(flag, type=_boolean, default=None, metavar="BOOL", help=f"default {f.default!r}")
        elif f.name == "corpus_paths":
            group.add_argument(flag, nargs="+", default=None, metavar="PATH", help="text files or folders (with --corpus files)")
        elif f.name == "weight_decay":
            group.add_argument(flag, type=float, default=None, help="explicit weight decay (default: from the timescale)")
        else:
            # `X | None` fields take an X from the command line.
            value_type = type(f.default) if f.default is not None else next(t for t in typing.get_args(kind) if t is not type(None))
            group.add_argument(flag, type=value_type, default=None, help=f"default {f.default!r}")


_BOOLEANS = {"true": True, "yes": True, "on": True, "1": True, "false": False, "no": False, "off": False, "0": False}


def _boolean(text: str) -> bool:
    # A typo must not silently read as False.
    try:
        return _BOOLEANS[text.strip().lower()]
    except KeyError:
        raise argparse.ArgumentTypeError(
            f"{text!r} is not a boolean; use true/false, yes/no, on/off or 1/0 (any case)"
        ) from None


def _config_from_args(args):
    from pythia_dynamics.train import SuiteConfig, tiny_test_config

    base = tiny_test_config() if args.tiny else SuiteConfig()
    changes = {f.name: getattr(args, f.name) for f in dataclasses.fields(SuiteConfig) if getattr(args, f.name) is not None}
    return base.replace(**changes)


def _train_suite(args) -> int:
    from pythia_dynamics.train import train_suite

    root = train_suite(_config_from_args(args), args.out)
    print(f"suite ready at {root}")
    return 0


def _sweep(args) -> int:
    from pythia_dynamics.sources import HubSource, open_source

    source = open_source(args.source, cache_policy=args.cache_policy, revision_pattern=args.revision_pattern,
                         series=args.series)
    if not isinstance(source, HubSource) and args.cache_policy != "keep":
        raise ValueError("--cache-policy applies to Hub sources only")
    # Before torch and TransformerLens are imported (seconds): a source that cannot be read fails at once.
    source.preflight(source.select(args.steps))

    from pythia_dynamics import sweep
    from pythia_dynamics.evalbatch import make_eval_batch

    batch = None
    if args.eval_text or args.eval_tokens:
        batch = make_eval_batch(source, text_file=args.eval_text, token_ids=args.eval_tokens)
    summary = sweep(source, args.out, steps=args.steps, analyses=args.analyses, device=args.device,
                    backend=args.backend, processed=args.processed, dtype=args.dtype, eval_batch=batch,
                    chunk_size=args.chunk_size, prefetch=not args.no_prefetch, recompute=args.recompute,
                    audit=not args.no_audit, exclude_suspect=args.exclude_suspect, reuse=args.reuse,
                    executor=args.executor, address=args.address, threads_per_worker=args.threads_per_worker)  # fmt: skip
    print(summary)
    return 1 if summary.failed else 0


def _audit(args) -> int:
    import json

    from pythia_dynamics.audit import audit

    listing = None
    if args.hub_listing is not None:
        listing = json.loads(args.hub_listing.read_text())
        listing = listing.get("trees", listing)  # a recorded listing may keep the branches' trees under "trees"
    report = audit(args.source, args.steps, store=args.out, hub=args.hub, hub_listing=listing, exact=args.exact)
    print(report)
    if args.out is not None:
        print(f"audit rows written to {args.out}")
    return 1 if report.suspect_steps else 0


def _push(args) -> int:
    from pythia_dynamics.share import push

    where = push(args.store, args.repo_id, private=args.private, dry_run=args.dry_run)
    print(f"dataset folder written to {where} (nothing uploaded)" if args.dry_run else f"published: {where}")
    return 0


def _pull(args) -> int:
    from pythia_dynamics.share import pull

    store = pull(args.repo_id, args.out, revision=args.revision)
    print(f"{len(store.results())} results of {', '.join(store.models()) or 'no model'} in {store.path}")
    return 0


def _query(args) -> int:
    import pandas as pd

    from pythia_dynamics.share import query

    result = query(args.store, args.sql)
    with pd.option_context("display.max_rows", 200, "display.width", 200):
        print(result.to_string(index=False) if len(result) else "(no rows)")
    if args.csv:
        result.to_csv(args.csv, index=False)
    return 0


def _verify(args) -> int:
    from pythia_dynamics.store import Store

    store = Store(args.store)
    problems = store.verify(repair=args.repair)
    results = store.results()
    print(f"{store.path}: {len(results)} results of {len({i.model for i in results})} model(s) read back")
    for problem in problems:
        print(f"  {problem}")
    damaged = [p for p in problems if p.kind == "damaged"]
    if damaged and args.repair:
        print(f"removed {len(damaged)} damaged result(s); the next sweep of the same source recomputes them")
    elif damaged:
        print("run again with --repair to remove the damaged results, so that the next sweep recomputes them")
    if any(p.kind == "mixed" for p in problems):
        print("mixed results: sweep again with --recompute ANALYSIS to recompute an analysis one way everywhere")
    if not problems:
        print("no problems found")
    return 1 if problems and not (args.repair and all(p.kind == "damaged" for p in problems)) else 0


def _report(args) -> int:
    from pythia_dynamics.report import build_report

    print(f"report written to {build_report(args.stores, args.out)}")
    return 0


def _formation(args) -> int:
    from pythia_dynamics.circuits import describe, formation
    from pythia_dynamics.store import Store

    table = formation(Store(args.store))
    if args.stat:
        table = table[table["stat"].isin(args.stat)]
    if args.csv:
        table.to_csv(args.csv, index=False)
        print(f"{len(table)} series written to {args.csv}")
    if table.empty:
        print(f"{args.store}: no head_scores or massive_activations results to time (sweep with --analyses head_scores,massive_activations)")
        return 1
    ranked = table.reindex(table["change"].abs().sort_values(ascending=False).index)
    for _, row in ranked.head(args.top or len(ranked)).iterrows():
        steepest = "" if row.isna()["steepest_from"] else f"; steepest between steps {row['steepest_from']} and {row['steepest_to']}"
        print(f"{row['model']} {row['analysis']} {row['component']}: {describe(row)}{steepest}")
    return 0


def _events(args) -> int:
    import json

    from pythia_dynamics.timeline import events, trajectories, trajectory_summary

    result = events(args.stores, model=args.model)
    print(result.table(top=args.top))
    tables = {name: getattr(result, name) for name in ("events", "phases", "aligned", "changepoints")}
    if args.fit:
        fits = trajectories(args.stores, model=args.model)
        tables["trajectories"], tables["trajectory_summary"] = fits, trajectory_summary(fits)
        show = lambda v: f"{v:.3g}"  # noqa: E731
        print("\nheld-out prediction error of every series (fit on the first 70% of checkpoints; nrmse = RMSE / range),"
              " per group and curve family:")
        print(tables["trajectory_summary"].to_string(index=False, float_format=show))
        headline = trajectories(args.stores, model=args.model, series="headline")
        picks = headline[headline["family"].str.startswith("chosen: ")]
        print("\nthe headline series, fitted by the family AICc chooses:")
        print(picks.drop(columns=["aicc"]).to_string(index=False, float_format=show))
    if args.out:
        records = {name: json.loads(table.to_json(orient="records")) for name, table in tables.items()}
        args.out.write_text(json.dumps(records, indent=1))
        print(f"tables written to {args.out}")
    return 0


def _demo(args) -> int:
    from pythia_dynamics import sweep
    from pythia_dynamics.report import build_report
    from pythia_dynamics.sources import LocalSuite
    from pythia_dynamics.sweeps import StoreMismatchError
    from pythia_dynamics.train import demo_suite_configs, ensure_default_suite

    print("1/3 the embedded mini-Pythia suites (trained once, then reused from the cache): the default recipe, "
          "and a small one with repeated spans where an induction head forms ...")  # fmt: skip
    suites = [ensure_default_suite(config) for config in demo_suite_configs(tiny=args.tiny)]
    for suite in suites:
        print(f"    {suite}")
    print("2/3 sweeping every checkpoint of both with every registered analysis ...")
    summaries = []
    for suite in suites:
        try:
            summary = sweep(LocalSuite(suite), args.out / "store")
        except StoreMismatchError as mismatch:  # a store left by another pythia_dynamics: bring it up to date
            print(f"    the demo store holds results computed differently; recomputing {', '.join(mismatch.analyses)}")
            summary = sweep(LocalSuite(suite), args.out / "store", recompute=mismatch.analyses)
        print(summary)
        summaries.append(summary)
    print("3/3 writing the report ...")
    report = build_report([args.out / "store"], args.out / "report.html")
    print(f"\nsuites: {', '.join(map(str, suites))}\nstore:  {args.out / 'store'}\nreport: {report}")
    return 1 if any(summary.failed for summary in summaries) else 0


def _steps(args) -> int:
    from pythia_dynamics.schedule import describe_schedule, format_tokens
    from pythia_dynamics.sources import open_source

    source = open_source(args.source, revision_pattern=args.revision_pattern, series=args.series)
    steps = source.select(args.spec)
    print(f"{source.name}: {describe_schedule(steps)}")
    revision = getattr(source, "revision", None)
    tokens = source.tokens_seen()
    if revision is not None or tokens:  # a suite whose branches are not plain step<N>, or that counts tokens
        for step in steps:
            print(f"  {step:>9}  {revision(step) if revision else ''}  "
                  f"{format_tokens(tokens[step]) + ' tokens' if step in tokens else ''}".rstrip())
    print(" ".join(map(str, steps)))
    return 0


def _models(args) -> int:
    from pythia_dynamics.catalog import HUB_ORG, LEGACY_SIZE_NAMES, MODEL_GROUPS
    from pythia_dynamics.schedule import describe_schedule
    from pythia_dynamics.sources import EMBEDDED_INDUCTION_SUITE, EMBEDDED_SUITE
    from pythia_dynamics.train.config import SuiteConfig

    print(f"Checkpoint suites on the Hugging Face Hub; the short name alone will do.\n\n"
          f"Pythia, -deduped, -v0 and PolyPythias ({HUB_ORG}/<name>) [gpt_neox], branches step{{N}}:")
    for title, models in MODEL_GROUPS.items():
        print(f"\n{title}: {describe_schedule(models[0].steps)}")
        print(textwrap.fill("  ".join(m.name for m in models), width=100, initial_indent="  ", subsequent_indent="  "))
    legacy = [f"pythia-{old} -> pythia-{new}-v0" for old, new in LEGACY_SIZE_NAMES.items()]
    print("\nthe first release's names, understood as the -v0 models they name (add -deduped for those):")
    print(textwrap.fill(", ".join(legacy), width=100, initial_indent="  ", subsequent_indent="  "))
    _print_suites()
    print(f"\nembedded: {EMBEDDED_SUITE} ({len(SuiteConfig().checkpoint_steps)} checkpoints), trained on first use "
          "(about 3 minutes on 2 CPU cores), then reused from the cache; "
          f"{EMBEDDED_INDUCTION_SUITE}, the demo's second suite, where an induction head forms")  # fmt: skip
    print("\nAny other Hub repository: hub:ORG/NAME (with --revision-pattern 'ckpt_{step}' where its branches "
          "are named otherwise; see docs/suites.md).")
    print("A suite of your own: pass its folder (step<N>/ or checkpoint-<N>/ ... sub-folders; see the README's "
          "'Local suites').")
    return 0


def _print_suites() -> None:
    """The non-Pythia suites, one block each: naming, family, schedule, models (short name = repository)."""
    from pythia_dynamics.suites import SUITES

    for suite in SUITES:
        if not suite.models:
            continue
        print(f"\n{suite.title} [{suite.family}], branches {suite.convention}:")
        print(textwrap.fill(suite.schedule, width=100, initial_indent="  schedule: ", subsequent_indent="    "))
        for model in suite.models:
            print(f"  {model.name:<28} {model.repo_id}")


def _analyses(args) -> int:
    from pythia_dynamics.analyses.registry import analysis_infos

    for analysis in analysis_infos():
        print(_analysis_line(analysis))
    return 0


def _analysis_line(analysis) -> str:
    """One line of `pythia-dynamics analyses`, for an `Analysis` or an `AnalysisInfo`."""
    return f"{analysis.name:<22} v{analysis.version:<3} needs {analysis.needs:<9} {analysis.description}"


def _svd_strings(args) -> int:
    from pythia_dynamics.analyses.svd_directions import directions_table, svd_strings
    from pythia_dynamics.loading import load_checkpoint

    checkpoint = load_checkpoint(args.source, args.step, backend=args.backend)
    strings = svd_strings(checkpoint.model, args.layer, args.kind, head=args.head, k=args.k, n=args.n,
                          negative=not args.no_negative)  # fmt: skip
    table = directions_table(strings).drop(columns=["component", "layer", "head"])
    where = f"OV head {args.head}" if args.head is not None else args.kind
    print(f"{checkpoint.id.model} step {args.step}, block {args.layer}, {where}: top tokens of each SVD direction")
    print(f"{'dir':>3}  {'side':<6} {'sigma':>9}  tokens")
    for row in table.itertuples():
        print(f"{row.direction:>3}  {row.side:<6} {row.singular_value:>9.4g}  {row.tokens}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
