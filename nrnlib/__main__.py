"""``python -m nrnlib reproduce [--profile P] [--only NN]``: execute every notebook in
``notebooks/`` under a profile, writing the executed ``.ipynb`` next to its ``.py`` and the
figures to ``figures/``."""

from __future__ import annotations

import argparse
import os
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


def execute_notebook(source: Path, timeout_s: int = 6 * 3600) -> float:
    """Run a jupytext ``.py`` top to bottom and save the paired ``.ipynb`` with its outputs."""
    import jupytext
    from nbclient import NotebookClient

    notebook = jupytext.read(source)
    notebook.metadata["kernelspec"] = {"name": "python3", "display_name": "Python 3", "language": "python"}
    start = time.perf_counter()
    NotebookClient(notebook, timeout=timeout_s, kernel_name="python3",
                   resources={"metadata": {"path": str(source.parent)}}).execute()
    jupytext.write(notebook, source.with_suffix(".ipynb"))
    return time.perf_counter() - start


def reproduce(profile_name: str | None, only: list[str] | None) -> None:
    profile = get_profile(profile_name)
    os.environ["NRN_PROFILE"] = profile.name
    sources = notebook_sources(only)
    minutes = profile.expected_minutes([source.name[:2] for source in sources])
    expected = (f"about {minutes:.0f} minutes on 2 CPU cores (uncached; much less on a GPU)" if minutes is not None
                else "not timed on a CPU: run it on a GPU")
    print(f"Profile {profile.name!r}: {len(sources)} notebooks, expected {expected}.", flush=True)
    total = time.perf_counter()
    for source in sources:
        print(f"  running {source.name} ...", flush=True)
        print(f"  done {source.name} in {execute_notebook(source):.0f} s", flush=True)
    print(f"All notebooks executed in {time.perf_counter() - total:.0f} s; figures in figures/.")


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m nrnlib")
    sub = parser.add_subparsers(dest="command", required=True)
    rep = sub.add_parser("reproduce", help="execute every notebook under a profile")
    rep.add_argument("--profile", choices=["smoke", "standard", "full"], default=None)
    rep.add_argument("--only", nargs="*", help="notebook prefixes, e.g. 00 02")
    args = parser.parse_args(argv)
    if args.command == "reproduce":
        reproduce(args.profile, args.only)


if __name__ == "__main__":
    sys.exit(main())
