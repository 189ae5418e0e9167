"""Command line: ``python -m latentbook {build,publish,check,sync,data,warm,cache}``.

``make book`` calls ``build``; ``make publish`` calls ``publish`` (the full book, the Colab and student
editions, refused while an address is a placeholder); instructors get every model ready with ``warm``
(fetched from the published book where it has them, else trained) and list or clear the store with ``cache``.
"""

from __future__ import annotations

import argparse
import sys
import time


def _build(args) -> int:
    from latentbook import build

    params = {"MODE": args.mode, "DEVICE": args.device, "DATASET": args.dataset, "SEED": args.seed}
    start = time.perf_counter()
    try:
        html, runs = build.build(params=params, only=args.chapters, force=args.force, site=not args.no_site,
                                 student=args.student, jobs=None if args.jobs == "auto" else int(args.jobs))
    except build.BuildError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print("\ninterrupted: the chapter that was executing keeps its last complete execution (if any); "
              "the next build resumes there", file=sys.stderr)
        return 130
    print()
    print(build.timing_table(runs))
    print(f"\ntotal {time.perf_counter() - start:.1f} s")
    if html is not None:
        print(f"the site is in {html} (open {html / 'index.html'}, or `make serve`)")
    return 0


def _publish(args) -> int:
    from latentbook import build, publish

    try:
        return publish.publish(build.project_root())
    except build.BuildError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print("\ninterrupted: nothing was committed; the next publish resumes the build", file=sys.stderr)
        return 130


def _check(args) -> int:
    from latentbook import build

    problems = build.check_pairs(build.project_root())
    for p in problems:
        print(p, file=sys.stderr)
    print("all chapters are paired and output-free" if not problems else f"{len(problems)} problem(s)")
    return 1 if problems else 0


def _sync(args) -> int:
    from latentbook import build

    build.sync(build.project_root())
    return _check(args)


def _data(args) -> int:
    from latentbook import data

    for name in args.names:
        try:
            folder = data.ensure(name)
        except Exception as exc:
            print(f"error: {exc}", file=sys.stderr)
            return 1
        print(f"{name}: {folder}")
    return 0


def _warm(args) -> int:
    from latentbook import store, zoo
    from latentbook.chapter import start

    run = start(args.mode, args.device, args.dataset, args.seed)
    zoo.warm(run, args.models, jobs=zoo.default_jobs(run.device) if args.jobs == "auto" else int(args.jobs))
    print(store.info())
    return 0


def _cache(args) -> int:
    from latentbook import store

    if args.action == "warm":  # the older spelling of `python -m latentbook warm`
        return _warm(args)
    print(store.info() if args.action == "info" else store.clear())
    return 0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m latentbook", description=__doc__)
    sub = parser.add_subparsers(dest="command", required=True)

    b = sub.add_parser("build", help="execute the chapters (papermill) and build the site (Jupyter Book)")
    b.add_argument("--mode", default="full", help="smoke (seconds, a data subset) or full (the book as published)")
    b.add_argument("--device", default="auto", help="auto, cpu or cuda")
    b.add_argument("--dataset", default="mnist", help="mnist or fashion-mnist")
    b.add_argument("--seed", type=int, default=0)
    b.add_argument("--chapters", nargs="*", help="execute only these chapters (file stems)")
    b.add_argument("--force", action="store_true", help="execute even chapters that are up to date")
    b.add_argument("--jobs", default="auto",
                   help="train the chapters' models this many at a time first (auto: one per two CPU cores in full mode)")
    b.add_argument("--no-site", action="store_true", help="execute only; do not build the site")
    b.add_argument("--student", action="store_true",
                   help="also build the student edition of the site (no solutions): _build/<mode>-student/html")
    b.set_defaults(func=_build)

    sub.add_parser("publish", help="the full book, its models, the Colab and student editions; refused while "
                   "_config.yml's addresses are placeholders").set_defaults(func=_publish)

    sub.add_parser("check", help="check that book/*.md and notebooks/*.ipynb are paired and output-free").set_defaults(func=_check)
    sub.add_parser("sync", help="rewrite notebooks/*.ipynb from book/*.md").set_defaults(func=_sync)

    d = sub.add_parser("data", help="fetch and verify the data sets into the cache")
    d.add_argument("names", nargs="*", default=["mnist", "fashion-mnist"])
    d.set_defaults(func=_data)

    for name, helptext, func in (
        ("warm", "get every model of the book ready: fetch the published entries, train only what is missing", _warm),
        ("cache", "list (info) or clear the store of trained models and evaluations; warm as above", _cache),
    ):
        c = sub.add_parser(name, help=helptext)
        if name == "cache":
            c.add_argument("action", choices=["info", "clear", "warm"])
        c.add_argument("--mode", default="full", help="warm: the run mode the chapters will use")
        c.add_argument("--device", default="auto")
        c.add_argument("--dataset", default="mnist")
        c.add_argument("--seed", type=int, default=0)
        c.add_argument("--models", nargs="*", help="warm only these (names in latentbook.zoo.RECIPES)")
        c.add_argument("--jobs", default="auto", help="train this many models at once (auto: one per two CPU cores, 1 on a GPU)")
        c.set_defaults(func=func)

    args = parser.parse_args(argv)
    return args.func(args)


if __name__ == "__main__":
    sys.exit(main())
