"""The benchmark harness every ``benchmarks/NAME.py`` uses.

A benchmark hands ``compare`` one zero-argument function per candidate ("gptsmith",
"llms_from_scratch", "transformers", ...). Each call runs ONE repeat and returns its figures,
e.g. ``{"tokens/s": 1234.0}``. The candidates alternate inside every repeat (and the order rotates
from one repeat to the next) so that a slow moment of the machine hits them all alike.
``print_report`` then prints the machine, the median and min-max range of every figure, and the
ratio of the baseline to each other candidate.

Memory is measured in a fresh subprocess per measurement (``run_in_subprocess`` +
``peak_rss_mb``), so one candidate's allocations never inflate another's peak.
"""

from __future__ import annotations

import argparse
import importlib
import json
import os
import platform
import resource
import statistics
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path

Figures = dict[str, float]
Results = dict[str, dict[str, list[float]]]

BENCH_DIR = Path(__file__).resolve().parent
REPO_ROOT = BENCH_DIR.parent
_NOT_BENCHMARKS = {"__init__", "__main__", "harness"}


def compare(
    candidates: dict[str, Callable[[], Figures]],
    repeats: int = 5,
    warmup: int = 1,
) -> Results:
    """Run every candidate ``warmup`` times (discarded), then ``repeats`` times alternating.

    Returns ``results[candidate][metric] -> list of floats`` (one value per repeat).
    """
    names = list(candidates)
    for _ in range(warmup):
        for name in names:
            candidates[name]()
    results: Results = {name: {} for name in names}
    for repeat in range(repeats):
        shift = repeat % len(names) if names else 0
        for name in names[shift:] + names[:shift]:
            for metric, value in candidates[name]().items():
                results[name].setdefault(metric, []).append(float(value))
    return results


def machine_info() -> dict[str, str]:
    """CPU model, cores, Python, torch version and threads (and the GPU when there is one)."""
    info = {"cpu": _cpu_model(), "cores": str(os.cpu_count())}
    if hasattr(os, "sched_getaffinity"):
        info["cores usable"] = str(len(os.sched_getaffinity(0)))
    info["python"] = platform.python_version()
    info["platform"] = platform.platform(terse=True)
    try:
        import torch

        info["torch"] = torch.__version__
        info["torch threads"] = str(torch.get_num_threads())
        if torch.cuda.is_available():
            info["gpu"] = torch.cuda.get_device_name(0)
    except ImportError:
        info["torch"] = "not installed"
    return info


def _cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def summarize(values: list[float]) -> tuple[float, float, float]:
    """(median, min, max)."""
    return statistics.median(values), min(values), max(values)


def _fmt(value: float) -> str:
    if abs(value) >= 100:
        return f"{value:,.0f}"  # 1,234,567 reads better than 1.23e+06 in a table
    if value == 0 or abs(value) >= 0.01:
        return f"{value:.3g}"
    return f"{value:.3e}"


def print_report(
    title: str,
    results: Results,
    baseline: str = "gptsmith",
    higher_is_better: dict[str, bool] | None = None,
    notes: list[str] | None = None,
    file=None,
) -> str:
    """Print (and return) a plain-text report: machine, median [min-max] per figure, ratios.

    Ratios are baseline / other on medians; a metric in ``higher_is_better`` marked False (e.g.
    ``peak_rss_mb``) is a lower-is-better figure, so a ratio below 1 favours the baseline there.
    """
    higher_is_better = higher_is_better or {}
    lines = [f"== {title} ==", "machine: " + ", ".join(f"{k}: {v}" for k, v in machine_info().items())]
    metrics: list[str] = []
    for figures in results.values():
        metrics += [m for m in figures if m not in metrics]
    width = max([len(n) for n in results] + [9])
    for metric in metrics:
        better = {True: "higher is better", False: "lower is better"}.get(higher_is_better.get(metric))
        lines.append(f"{metric}" + (f" ({better})" if better else ""))
        for name, figures in results.items():
            if metric not in figures or not figures[metric]:
                continue
            med, lo, hi = summarize(figures[metric])
            n = len(figures[metric])
            lines.append(f"  {name:<{width}}  median {_fmt(med):>10}  range {_fmt(lo)} - {_fmt(hi)}  (n={n})")
        base = results.get(baseline, {}).get(metric)
        if base:
            base_med = statistics.median(base)
            for name, figures in results.items():
                if name == baseline or not figures.get(metric):
                    continue
                other = statistics.median(figures[metric])
                ratio = base_med / other if other else float("inf")
                lines.append(f"  ratio {baseline} / {name}: {ratio:.3g}x")
    for note in notes or []:
        lines.append(f"note: {note}")
    text = "\n".join(lines)
    print(text, file=file or sys.stdout, flush=True)
    return text


def base_parser(description: str, module: str) -> argparse.ArgumentParser:
    """An argument parser with the options every benchmark takes (--repeats, --warmup, --output).

    ``module`` is the benchmark's ``__name__``, so ``--help`` names the command that runs it.
    """
    prog = f"python -m benchmarks {module.rsplit('.', 1)[-1]}"
    parser = argparse.ArgumentParser(prog=prog, description=description)
    parser.add_argument("--repeats", type=int, default=5, help="measured repeats per candidate (default 5)")
    parser.add_argument("--warmup", type=int, default=1, help="discarded warm-ups per candidate (default 1)")
    parser.add_argument("--output", type=Path, default=None, help="also append the report to this file")
    return parser


def write_report(text: str, output: Path | None) -> None:
    """Append ``text`` to ``output`` (when given), with a blank line after it."""
    if output is not None:
        output.parent.mkdir(parents=True, exist_ok=True)
        with output.open("a", encoding="utf-8") as handle:
            handle.write(text + "\n\n")


def peak_rss_mb() -> float:
    """This process's peak resident set size in MiB (VmHWM from /proc, else getrusage)."""
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) / 1024  # kB -> MiB
    except OSError:
        pass
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return peak / (1024 * 1024) if sys.platform == "darwin" else peak / 1024


def run_in_subprocess(code: str, timeout: float = 600.0, env: dict[str, str] | None = None) -> Figures:
    """Run Python ``code`` in a fresh interpreter and return the JSON dict it prints on its last line.

    The child runs from the repository root (so ``gptsmith`` and ``benchmarks`` import) and can
    call ``benchmarks.harness.peak_rss_mb()`` for a clean memory figure.
    """
    proc = subprocess.run(
        [sys.executable, "-c", code],
        capture_output=True,
        text=True,
        timeout=timeout,
        cwd=REPO_ROOT,
        env={**os.environ, **(env or {})},
    )
    if proc.returncode != 0:
        raise RuntimeError(f"benchmark subprocess failed ({proc.returncode}):\n{proc.stderr[-2000:]}")
    last = proc.stdout.strip().splitlines()[-1]
    return {k: float(v) for k, v in json.loads(last).items()}


def timed(fn: Callable[[], object]) -> float:
    """Seconds ``fn()`` takes (perf_counter)."""
    start = time.perf_counter()
    fn()
    return time.perf_counter() - start


def optional_import(module: str):
    """The module, or None when it is not installed (benchmarks then leave that reference out)."""
    try:
        return importlib.import_module(module)
    except ImportError:
        return None


def list_benchmarks() -> list[tuple[str, str]]:
    """(name, first docstring line) of every benchmark module in this package."""
    found = []
    for path in sorted(BENCH_DIR.glob("*.py")):
        if path.stem in _NOT_BENCHMARKS or path.stem.startswith("_"):
            continue
        summary = ""
        text = path.read_text(encoding="utf-8")
        for quote in ('"""', "'''"):
            if text.lstrip().startswith(quote):
                summary = text.lstrip()[3:].split("\n", 1)[0].strip().rstrip(quote)
                break
        found.append((path.stem, summary))
    return found


def run_benchmark(name: str, argv: list[str]) -> int:
    """Import ``benchmarks/NAME.py`` and call its ``main(argv)``; returns an exit status."""
    known = [n for n, _ in list_benchmarks()]
    if name not in known:
        print(f"unknown benchmark {name!r} (known: {', '.join(known) or 'none yet'})", file=sys.stderr)
        return 2
    module = importlib.import_module(f"benchmarks.{name}")
    return int(module.main(argv) or 0)
