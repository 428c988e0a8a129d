"""Per-value latency of streaming prediction against re-running the window.

For each new value of a series, ``Stream.push`` (what ``lstmkit predict --stream`` calls)
runs one LSTM step with (h, c) carried; without it, a caller re-runs ``predict_steps`` on the
values so far (O(t) per value) or on the last ``data.length`` values (the run's training
window; constant, but forgets everything before it). Times are medians over ``--values``
values per contestant, after a warm-up, in one process.

    python bench/bench_stream.py [--run runs/counting] [--values 300] [--history 10 100 1000]
                                 [--threads 1] [--json]

Without a run directory at ``--run`` it times an untrained model of the default config
(latency does not depend on the weights).
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import tempfile
import time
from pathlib import Path

import torch

from lstmkit.checkpoint import load_run, save_run
from lstmkit.config import RunConfig
from lstmkit.data import TaskFacts, resolve
from lstmkit.forecast import predict_steps
from lstmkit.model import SequenceModel
from lstmkit.scaling import Scaler
from lstmkit.streaming import Stream


def _default_run(path: Path):
    cfg = resolve(RunConfig())  # the counting task's defaults, as `lstmkit train` resolves them
    task = TaskFacts(input_size=1, output_size=1)
    model = SequenceModel(1, cfg.model.hidden_size, 1, num_layers=cfg.model.num_layers)
    save_run(path, cfg, task, model.state_dict(), Scaler("diff"))
    return load_run(path)


def _median_us(fn, n: int) -> float:
    times = []
    for i in range(n):
        t = time.perf_counter()
        fn(i)
        times.append(time.perf_counter() - t)
    return statistics.median(times) * 1e6


def measure(run, n_values: int, histories: list[int]) -> dict:
    series = [float(i % 50) for i in range(max(histories) + n_values + 10)]
    stream = Stream(run)
    for v in series[:10]:  # warm-up
        stream.push(v)
    res = {"stream_us": _median_us(lambda i: stream.push(series[10 + i]), n_values)}
    window = run.config.data.length or 4
    res["window"] = window
    res["rerun_window_us"] = _median_us(
        lambda i: predict_steps(run, series[i : i + window]), n_values
    )
    res["rerun_history_us"] = {
        str(t): _median_us(lambda i, t=t: predict_steps(run, series[i : i + t]), n_values)
        for t in histories
    }
    return res


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--run", default="runs/counting")
    p.add_argument("--values", type=int, default=300, help="values timed per contestant")
    p.add_argument("--history", type=int, nargs="+", default=[10, 100, 1000])
    p.add_argument("--threads", type=int, default=1, help="torch threads (default 1)")
    p.add_argument("--json", action="store_true")
    args = p.parse_args(argv)
    torch.set_num_threads(args.threads)
    with tempfile.TemporaryDirectory() as tmp:
        if Path(args.run).is_dir():
            run, which = load_run(args.run), args.run
        else:
            run, which = _default_run(Path(tmp) / "run"), "untrained default config"
        res = measure(run, args.values, args.history)
    res.update(run=which, threads=torch.get_num_threads(), torch=torch.__version__)
    if args.json:
        print(json.dumps(res, indent=2))
        return 0
    print(f"run: {which}, torch {torch.__version__}, {res['threads']} threads", file=sys.stderr)
    print("| per new value | median µs |\n|---|---|")
    print(f"| Stream.push (predict --stream) | {res['stream_us']:.0f} |")
    print(f"| predict_steps on the last {res['window']} values | {res['rerun_window_us']:.0f} |")
    for t, us in res["rerun_history_us"].items():
        print(f"| predict_steps on the last {t} values | {us:.0f} |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
