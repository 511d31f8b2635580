"""Regression on real data that ships inside ``statsmodels`` (no download): the toolkit's model, trained with the
shipped configs, against the baselines of ``regression/baselines.py`` on the same test examples.

    python bench/regression_real.py                      # every data set, the shipped configs
    python bench/regression_real.py --only nile,fair     # some of them
    python bench/regression_real.py --set regressor.window_norm=none   # an alternative, for measuring defaults

Each data set is written to a CSV and trained with ``train.py --config configs/regression/<kind>.yaml``; the
overrides name only the file, its columns and the task (the next value from the last ``WINDOW``
observations; for ``grunfeld``, the data set's own regression: a firm's investment from the same year's
value and capital and its past investment), never model or training settings. Prints, per data set, the command line, the
wall time, and test RMSE / MAE / R² of the model and of every baseline with the RMSE ratio to the best
baseline (the target: at most 1.00).
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
WINDOW = 8  # yearly / quarterly series of 20 to 200 rows: two years of quarters, eight years


def _frames() -> dict:
    """name -> (data frame, config, overrides); each loader imports statsmodels lazily."""
    import numpy as np
    import pandas as pd

    try:
        import statsmodels.api as sm
    except ImportError:
        raise SystemExit("bench/regression_real.py reads its data sets from statsmodels, which is not installed: "
                         "pip install -e '.[bench]'") from None

    def macrodata():
        d = sm.datasets.macrodata.load_pandas().data
        d["date"] = pd.PeriodIndex.from_fields(year=d["year"].astype(int), quarter=d["quarter"].astype(int), freq="Q").to_timestamp()
        return d[["date", "realgdp", "realcons", "realinv"]], "sequence", [
            "data.target_columns=[realgdp]", "data.feature_columns=[realcons,realinv]", "data.time_column=date", "data.series_column=null"]

    def nile():
        return sm.datasets.nile.load_pandas().data, "sequence", [
            "data.target_columns=[volume]", "data.feature_columns=[]", "data.time_column=year", "data.series_column=null"]

    def grunfeld():  # investment from the same year's firm value and capital stock and past investment (Grunfeld 1958)
        d = sm.datasets.grunfeld.load_pandas().data
        d["firm"] = d["firm"].astype(str)
        return d, "sequence", ["data.target_columns=[invest]", "data.feature_columns=[value,capital]",
                               "data.series_column=firm", "data.time_column=year", "data.horizon=0"]

    def fair():
        d = sm.datasets.fair.load_pandas().data
        features = [c for c in d.columns if c != "affairs"]
        return d, "tabular", ["data.target_columns=[affairs]", f"data.feature_columns=[{','.join(features)}]"]

    def randhie():
        d = sm.datasets.randhie.load_pandas().data.astype(np.float64)
        features = [c for c in d.columns if c != "mdvis"]
        return d, "tabular", ["data.target_columns=[mdvis]", f"data.feature_columns=[{','.join(features)}]"]

    # three more, of the kinds the issue describes: a weekly series climbing past its training range, a yearly
    # one with about 200 training rows, a monthly climate series
    def co2():
        d = sm.datasets.co2.load_pandas().data.rename_axis("date").reset_index()
        return d, "sequence", ["data.target_columns=[co2]", "data.feature_columns=[]", "data.time_column=date",
                               "data.series_column=null"]  # 59 missing weeks: the config's data.missing=ffill

    def sunspots():
        return sm.datasets.sunspots.load_pandas().data, "sequence", [
            "data.target_columns=[SUNACTIVITY]", "data.feature_columns=[]", "data.time_column=YEAR", "data.series_column=null"]

    def elnino():
        wide = sm.datasets.elnino.load_pandas().data
        d = wide.melt(id_vars="YEAR", var_name="month", value_name="temperature")
        d["date"] = pd.to_datetime(d["YEAR"].astype(int).astype(str) + "-" + d["month"], format="%Y-%b")
        return d.sort_values("date")[["date", "temperature"]], "sequence", [
            "data.target_columns=[temperature]", "data.feature_columns=[]", "data.time_column=date", "data.series_column=null"]

    # three small tables without repeated rows (retrieval auto stays off on them)
    def engel():  # household food expenditure from income (Engel 1857), 235 rows
        return sm.datasets.engel.load_pandas().data, "tabular", ["data.target_columns=[foodexp]", "data.feature_columns=[income]"]

    def anes96():  # log population of the respondent's place, from the 1996 election survey's other answers, 944 rows
        d = sm.datasets.anes96.load_pandas().data.astype(np.float64)
        features = [c for c in d.columns if c not in ("logpopul", "popul")]
        return d, "tabular", ["data.target_columns=[logpopul]", f"data.feature_columns=[{','.join(features)}]"]

    def star98():  # California schools' math test passes from their characteristics, 303 rows
        d = sm.datasets.star98.load_pandas().data.astype(np.float64)
        features = [c for c in d.columns if c not in ("NABOVE", "NBELOW")]
        return d, "tabular", ["data.target_columns=[NABOVE]", f"data.feature_columns=[{','.join(features)}]"]

    return {"macrodata": macrodata, "nile": nile, "grunfeld": grunfeld, "fair": fair, "randhie": randhie,
            "co2": co2, "sunspots": sunspots, "elnino": elnino, "engel": engel, "anes96": anes96, "star98": star98}


CONFIGS = {"sequence": "configs/regression/csv_timeseries.yaml", "tabular": "configs/regression/csv_tabular.yaml"}
TASK = {"sequence": [f"data.window={WINDOW}", "data.horizon=1", "data.horizon_steps=1"], "tabular": []}


def run_one(name: str, loader, work: Path, extra: list[str], seed: int) -> dict:
    frame, kind, columns = loader()
    path = work / f"{name}.csv"
    frame.to_csv(path, index=False)
    out = work / f"runs-{name}-{seed}"
    args = [sys.executable, "train.py", "--config", CONFIGS[kind], f"data.path={path}", *TASK[kind], *columns,
            f"name={name}", f"out_dir={out}", f"seed={seed}", "trainer.progress_bar=false", *extra]
    started = time.perf_counter()
    proc = subprocess.run(args, cwd=ROOT, capture_output=True, text=True)
    seconds = time.perf_counter() - started
    if proc.returncode != 0:
        raise SystemExit(f"{name} failed ({proc.returncode}):\n{proc.stderr[-3000:]}")
    result = json.loads(next(out.glob("*/result.json")).read_text())
    shown = " ".join(a if " " not in a else repr(a) for a in ["python", *args[1:]]).replace(str(work), "$DATA")
    return {"name": name, "command": shown, "seconds": seconds, "result": result}


def table(rows: list[dict]) -> str:
    lines = ["| data set | model | test RMSE | MAE | R² | RMSE / best baseline | time |", "|---|---|---:|---:|---:|---:|---:|"]
    for row in rows:
        r = row["result"]
        best = r["best_baseline"]["test"]["rmse"]
        entries = [("transformer", r["test"])] + [(b, m["test"]) for b, m in r["baselines"].items() if "test" in m]
        for label, m in entries:
            timing = f"{row['seconds']:.0f} s" if label == "transformer" else ""
            lines.append(f"| {row['name']} | {label} | {m['rmse']:.4g} | {m['mae']:.4g} | {m['r2']:.3f} | "
                         f"{m['rmse'] / best:.3f} | {timing} |")
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--only", default="", help="comma-separated data set names")
    parser.add_argument("--set", action="append", default=[], help="an extra override for every run (key=value)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--json", help="also write the rows to this file")
    args = parser.parse_args()
    loaders = _frames()
    names = [n for n in args.only.split(",") if n] or list(loaders)
    unknown = [n for n in names if n not in loaders]
    if unknown:
        raise SystemExit(f"--only: unknown data set(s) {unknown}; available: {', '.join(loaders)}")
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        for name in names:
            row = run_one(name, loaders[name], Path(tmp), args.set, args.seed)
            rows.append(row)
            r = row["result"]
            print(f"{name}: {row['seconds']:.0f} s, test RMSE {r['test']['rmse']:.4g}, best baseline "
                  f"{r['best_baseline']['test']['name']} {r['best_baseline']['test']['rmse']:.4g} "
                  f"(ratio {r['test']['rmse'] / r['best_baseline']['test']['rmse']:.3f})\n  {row['command']}", flush=True)
    print()
    print(table(rows))
    if args.json:
        Path(args.json).write_text(json.dumps(rows, indent=2))


if __name__ == "__main__":
    main()
