"""``python -m jobs``: run, validate, or demo a batch inference job.

Exit status: 0 when the run met its limits, 1 when it did not (or failed), 2 when
the spec or configuration is wrong (nothing was called), 3 when ``max_spend`` stopped
it at a chunk boundary (resumable).
"""

from __future__ import annotations

import argparse
import sys
import time
from dataclasses import replace
from pathlib import Path

from batch.config import REGISTRY_ENV, Registry, registry
from batch.errors import BatchError, ConfigError

from .session import session_for
from .spec import MODES, JobSpec, load_spec
from .summary import summary

__all__ = ["main", "EXIT_OK", "EXIT_FAILED", "EXIT_CONFIG", "EXIT_STOPPED"]

EXIT_OK, EXIT_FAILED, EXIT_CONFIG = 0, 1, 2
EXIT_STOPPED = 3  # stopped cleanly by limits.max_spend at a chunk boundary: run again to answer the rest


def _count(text: str) -> int:
    """A row count on the command line: a whole number of at least 1 (argparse turns the error into exit 2)."""
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a whole number, got {text!r}") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be at least 1, got {value}")
    return value


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m jobs", description=__doc__.splitlines()[0])
    commands = parser.add_subparsers(dest="command", required=True)
    run = commands.add_parser("run", help="run a job spec")
    run.add_argument("spec", type=Path)
    run.add_argument("--only-failed", action="store_true",
                     help="answer again only the rows that failed in earlier runs")
    run.add_argument("--max-rows", type=_count, help="answer at most this many rows in this run")
    run.add_argument("--master", help="Spark master, or sc://host:port for Spark Connect (default: the spec's, "
                                      "or local[*])")
    run.add_argument("--endpoints", type=Path, help=f"endpoint registry file (default: ${REGISTRY_ENV} or "
                                                    "conf/endpoints.yaml)")
    run.add_argument("--run-id", help="an id for this run (default: random)")
    run.add_argument("--quiet", action="store_true", help="no live progress line")
    run.add_argument("--mode", choices=MODES, help="results.mode for this run; sync also removes the answers of "
                                                   "keys no longer in the input")
    estimate = commands.add_parser("estimate", help="rows, tokens and cost of what run would answer, before "
                                                    "running it")
    estimate.add_argument("spec", type=Path)
    estimate.add_argument("--sample", type=int, default=0, metavar="N",
                          help="ask N real rows per output and scale the figures by what was billed")
    estimate.add_argument("--only-failed", action="store_true")
    estimate.add_argument("--max-rows", type=_count)
    estimate.add_argument("--mode", choices=MODES)
    estimate.add_argument("--master")
    estimate.add_argument("--endpoints", type=Path)
    validate = commands.add_parser("validate", help="check a job spec without starting Spark")
    validate.add_argument("spec", type=Path)
    validate.add_argument("--endpoints", type=Path)
    preview = commands.add_parser("preview", help="answer a stable sample of the input through each variant "
                                                  "(endpoints, prompts) and write an HTML page comparing them")
    preview.add_argument("spec", type=Path)
    preview.add_argument("--rows", type=_count, help="rows in the sample (default: the spec's preview.rows, or 20)")
    preview.add_argument("--endpoint", action="append", default=[], metavar="[OUTPUT=]NAME",
                         help="a variant answered by this endpoint (every output of its task, or only OUTPUT); "
                              "repeat to compare")
    preview.add_argument("--variant", action="append", default=[], help="only these variants of the spec")
    preview.add_argument("--out", type=Path, help="the page's path (default: previews/<job>.html in the warehouse)")
    preview.add_argument("--master")
    preview.add_argument("--endpoints", type=Path)
    demo = commands.add_parser("demo", help="start a local endpoint and run the demo job end to end")
    demo.add_argument("--rows", type=_count, default=None, help="use only the first N sample tickets")
    demo.add_argument("--real", action="store_true", help="answer with a real model on this machine (llama.cpp's "
                                                          "llama-server with SmolLM2-135M, built on first use)")
    return parser


def _endpoints(args: argparse.Namespace) -> Registry:
    """``--endpoints FILE``: the registry this command resolves names in, beside the entries added in code."""
    if not getattr(args, "endpoints", None):
        return registry
    try:
        return registry.with_file(args.endpoints)
    except ConfigError as exc:
        raise ConfigError(f"--endpoints: {exc}") from None


def _load(args: argparse.Namespace) -> JobSpec:
    spec = load_spec(args.spec, _endpoints(args))
    if getattr(args, "max_rows", None):
        spec = replace(spec, limits=replace(spec.limits, max_rows=args.max_rows))
    if getattr(args, "mode", None):
        spec = replace(spec, mode=args.mode)
    return spec


def run_command(args: argparse.Namespace) -> int:
    from .progress import Progress
    from .runner import run_job

    spec = _load(args)  # every spec error is reported here, before Spark starts
    spark = session_for(spec, args.master)
    progress = Progress(spec.name, live=False if args.quiet else None)
    started = time.monotonic()
    result = run_job(spark, spec, only_failed=args.only_failed, run_id=args.run_id, progress=progress)
    print(summary(spec, result, time.monotonic() - started), flush=True)
    return EXIT_OK if result.ok else EXIT_STOPPED if result.stopped else EXIT_FAILED


def estimate_command(args: argparse.Namespace) -> int:
    from .estimate import describe, estimate_job

    spec = _load(args)
    spark = session_for(spec, args.master)
    print(describe(spec, estimate_job(spark, spec, sample=args.sample, only_failed=args.only_failed)), flush=True)
    return EXIT_OK


def preview_command(args: argparse.Namespace) -> int:
    from . import page
    from .preview import default_path, load_variants, render_html, render_text, run_preview

    # every spec error is reported here, before Spark starts, as for a run
    base, variants, rows = load_variants(args.spec, args.endpoint, args.variant, _endpoints(args))
    spark = session_for(base, args.master)
    preview = run_preview(spark, base, variants, args.rows or rows)
    path = page.write_page(args.out or default_path(spark, base), render_html(preview))
    print(render_text(preview, path), flush=True)
    return EXIT_OK


def main(argv: list[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    try:
        if args.command == "validate":
            spec = _load(args)
            print(f"{args.spec}: job {spec.name} is valid ({len(spec.outputs)} outputs: "
                  f"{', '.join(o.name + ' -> ' + o.query.endpoint.name for o in spec.outputs)})")
            return EXIT_OK
        if args.command == "preview":
            return preview_command(args)
        if args.command == "estimate":
            return estimate_command(args)
        if args.command == "demo":
            from .demo import run_demo
            return EXIT_OK if run_demo(rows=args.rows, real=args.real) else EXIT_FAILED
        return run_command(args)
    except ConfigError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return EXIT_CONFIG
    except BatchError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return EXIT_FAILED
