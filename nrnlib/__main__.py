"""``python -m nrnlib reproduce [--profile P] [--only NN] [--dry-run]``: execute every notebook in
``notebooks/`` under a profile, writing the executed ``.ipynb`` next to its ``.py`` and the
figures to ``figures/``; ``--dry-run`` prints the plan (notebooks, tasks, sizes per step, expected
minutes) and fails clearly when a size cannot be met."""

from __future__ import annotations

import argparse
import os
import re
import sys
import time
from pathlib import Path

from nrnlib.profiles import get_profile

NOTEBOOKS = Path(__file__).resolve().parent.parent / "notebooks"


def notebook_sources(only: list[str] | None = None) -> list[Path]:
    sources = sorted(NOTEBOOKS.glob("[0-9][0-9]_*.py"))
    if only:
        sources = [p for p in sources if any(p.name.startswith(prefix) for prefix in only)]
    if not sources:
        raise SystemExit(f"No notebooks found in {NOTEBOOKS}" + (f" matching {only}" if only else ""))
    return sources


# For committed notebooks: no progress-bar noise in the outputs, and every figure also as a PNG
# (readable on a repository viewer, in nbconvert HTML and on paper, not only in a live Jupyter).
QUIET_KERNEL_ENV = {"TQDM_DISABLE": "1", "HF_HUB_DISABLE_PROGRESS_BARS": "1", "TRANSFORMERS_VERBOSITY": "error",
                    "NRN_NOTEBOOK_PNG": "1"}


_PROGRESS_LINE = re.compile(r"^[^\n]*\d+%\|[^\n]*\|[^\n]*$")  # a tqdm bar: "desc:  25%|██▌  | 1/4 [...]"


def _is_noise(text: str) -> bool:
    """A stderr chunk that is only progress bars, blank, or tqdm's "IProgress not found" warning."""
    if "TqdmWarning: IProgress not found" in text:
        return True
    return all(not line.strip() or _PROGRESS_LINE.match(line.strip()) for line in re.split(r"[\r\n]", text))


def strip_progress_noise(notebook) -> int:
    """Drop stderr outputs that are only progress bars (tqdm bars whose ``disable`` is set by the
    caller ignore ``TQDM_DISABLE``) or tqdm's widget warning; return how many were dropped. Real
    warnings and every stdout output stay."""
    dropped = 0
    for cell in notebook.cells:
        if cell.cell_type != "code":
            continue
        outputs = cell.get("outputs", [])
        kept = [o for o in outputs if not (o.get("output_type") == "stream" and o.get("name") == "stderr"
                                           and _is_noise(o.get("text", "")))]
        dropped += len(outputs) - len(kept)
        cell["outputs"] = kept
    return dropped


def execute_notebook(source: Path, timeout_s: int = 6 * 3600, output: Path | None = None) -> float:
    """Run a jupytext ``.py`` top to bottom and save the ``.ipynb`` with its outputs (the paired one
    next to it, or ``output``; the kernel runs with ``QUIET_KERNEL_ENV``)."""
    import jupytext
    from nbclient import NotebookClient

    os.environ.update(QUIET_KERNEL_ENV)  # inherited by the kernel process
    notebook = jupytext.read(source)
    notebook.metadata["kernelspec"] = {"name": "python3", "display_name": "Python 3", "language": "python"}
    start = time.perf_counter()
    NotebookClient(notebook, timeout=timeout_s, kernel_name="python3",
                   resources={"metadata": {"path": str(source.parent)}}).execute()
    strip_progress_noise(notebook)
    target = source.with_suffix(".ipynb") if output is None else output
    target.parent.mkdir(parents=True, exist_ok=True)
    jupytext.write(notebook, target)
    return time.perf_counter() - start


def print_plan(profile_name: str | None, only: list[str] | None) -> int:
    """The ``--dry-run`` table: per notebook, the sizes each task gets (clipped ones marked)."""
    from nrnlib.profiles import ProfileError, plan

    profile = get_profile(profile_name)
    prefixes = [source.name[:2] for source in notebook_sources(only)]
    try:
        rows = plan(profile, prefixes)
    except ProfileError as err:
        print(f"ERROR: {err}", file=sys.stderr)
        return 2
    minutes = profile.expected_minutes(prefixes)
    expected = f"{minutes:.0f} minutes on 2 CPU cores" if minutes is not None else "not timed on a CPU"
    print(f"Profile {profile.name!r}: notebooks {' '.join(prefixes)}; seeds {list(profile.seeds)}; expected {expected}")
    for prefix in prefixes:
        part = [r for r in rows if r["notebook"] == prefix]
        if not part:
            print(f"  {prefix}: no per-task sizes")
            continue
        sizes = sorted({r["size"] for r in part})
        for size in sizes:
            of_size = [r for r in part if r["size"] == size]
            clipped = [f"{r['task']} {r['used']}" for r in of_size if r["clipped"]]
            print(f"  {prefix}: {size} = {of_size[0]['asked']} for {len(of_size)} tasks"
                  + (f" (clipped to what the task has: {', '.join(clipped)})" if clipped else ""))
    return 0


def reproduce(profile_name: str | None, only: list[str] | None, workers: int | None = None) -> None:
    from nrnlib.workers import default_workers

    profile = get_profile(profile_name)
    os.environ["NRN_PROFILE"] = profile.name
    if workers is not None:
        os.environ["NRN_WORKERS"] = str(workers)  # inherited by the kernels
    workers = default_workers()
    sources = notebook_sources(only)
    minutes = profile.expected_minutes([source.name[:2] for source in sources])
    expected = (f"about {minutes:.0f} minutes on 2 CPU cores (uncached; much less on a GPU)" if minutes is not None
                else "not timed on a CPU: run it on a GPU")
    print(f"Profile {profile.name!r}: {len(sources)} notebooks, expected {expected}; independent arms shared "
          f"over {workers} process{'es' if workers > 1 else ''} (NRN_WORKERS).", flush=True)
    out_dir = None
    if profile.name == "smoke":  # a quick look never overwrites the committed notebooks, figures and results
        out_dir = Path(os.environ.get("NRN_SMOKE_DIR") or Path.cwd() / ".nrn_cache" / "smoke")
        if not os.environ.get("NRN_FIGURES"):
            os.environ["NRN_FIGURES"] = str(out_dir / "figures")
        print(f"  smoke: executed notebooks go to {out_dir / 'notebooks'}, figures and results to "
              f"{os.environ['NRN_FIGURES']}", flush=True)
    total = time.perf_counter()
    for source in sources:
        print(f"  running {source.name} ...", flush=True)
        target = None if out_dir is None else out_dir / "notebooks" / source.with_suffix(".ipynb").name
        print(f"  done {source.name} in {execute_notebook(source, output=target):.0f} s", flush=True)
    print(f"All notebooks executed in {time.perf_counter() - total:.0f} s; figures in figures/.")
    from nrnlib import scorecard, store

    if store.figures_dir().resolve() == (store.REPO_ROOT / "figures").resolve():  # not for NRN_FIGURES elsewhere
        scorecard.main(check=False, output=None)  # REPRODUCTION.md follows the results just written
    from nrnlib.gallery import build_gallery

    print(f"Gallery: {build_gallery()}")


def _positive_int(text: str) -> int:
    value = int(text)
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be a positive integer, got {value}")
    return value


def main(argv: list[str] | None = None) -> int | None:
    parser = argparse.ArgumentParser(prog="python -m nrnlib")
    sub = parser.add_subparsers(dest="command", required=True)
    rep = sub.add_parser("reproduce", help="execute every notebook under a profile")
    rep.add_argument("--profile", choices=["smoke", "standard", "full"], default=None)
    rep.add_argument("--only", nargs="*", help="notebook prefixes, e.g. 00 02")
    rep.add_argument("--dry-run", action="store_true", help="print the plan and check every size; run nothing")
    rep.add_argument("--workers", type=_positive_int, default=None,
                     help="CPU processes that share a notebook's independent arms (default: $NRN_WORKERS, else "
                          "the usable cores up to 4)")
    sub.add_parser("gallery", help="write figures/index.html: every figure, offline, with its caption")
    card = sub.add_parser("scorecard", help="write REPRODUCTION.md from figures/results/*.json")
    card.add_argument("--check", action="store_true", help="write nothing; exit 1 if REPRODUCTION.md is out of date")
    card.add_argument("--output", type=Path, default=None, help="where to write (default: REPRODUCTION.md)")
    args = parser.parse_args(argv)
    if args.command == "gallery":
        from nrnlib.gallery import build_gallery

        print(f"wrote {build_gallery()}")
        return 0
    if args.command == "scorecard":
        from nrnlib import scorecard

        return scorecard.main(check=args.check, output=args.output)
    if args.command == "reproduce":
        if args.dry_run:
            return print_plan(args.profile, args.only)
        reproduce(args.profile, args.only, args.workers)


if __name__ == "__main__":
    sys.exit(main())
