"""Sweeps and the comparison report: a tiny three-type sweep end to end, fairness flags, invalid combinations."""

import json
import math
from pathlib import Path

import pandas as pd
import pytest

from transformer.cli import main
from transformer.compare import report
from transformer.sweep import SweepPlan, run_sweep

from .training.conftest import tiny_overrides

PNG = b"\x89PNG\r\n\x1a\n"


@pytest.fixture
def corpus(tmp_path):
    from .training.conftest import PATTERN

    path = tmp_path / "toy.txt"
    path.write_text(PATTERN * 120)
    return path


def base_overrides(corpus, tmp_path):
    return tiny_overrides(corpus, tmp_path / "runs", **{"trainer.max_steps": 6, "trainer.val_check_interval": 3,
                                                        "trainer.limit_val_batches": 2, "sample.max_new_tokens": 0})


def _record_plots(monkeypatch):
    """Every saved figure's series: {file name: {label: (colour, x values)}}, and whether every text fits in it."""
    from matplotlib.colors import to_hex
    from matplotlib.figure import Figure

    seen, original = {}, Figure.savefig

    def savefig(fig, path, *args, **kwargs):
        ax = fig.axes[0]
        series = {line.get_label(): (to_hex(line.get_color()), list(line.get_xdata())) for line in ax.lines
                  if not line.get_label().startswith(("_", "frontier"))}
        series.update({c.get_label(): (to_hex(c.get_facecolor()[0]), list(c.get_offsets()[:, 0])) for c in ax.collections})
        fig.canvas.draw()
        box = fig.bbox
        fits = all(box.x0 <= t.get_window_extent().x0 and t.get_window_extent().x1 <= box.x1 for t in ax.texts)
        seen[Path(path).name] = (series, fits)
        return original(fig, path, *args, **kwargs)

    monkeypatch.setattr(Figure, "savefig", savefig)
    return seen


def test_three_type_sweep_and_report(tmp_path, corpus, capsys, monkeypatch):
    runs = [{"model.attention.type": "gqa", "model.attention.num_kv_heads": 2}, {"model.attention.type": "mha"},
            {"model.attention.type": "mqa"}, {"model.attention.type": "gqa", "model.attention.num_kv_heads": 3}]
    experiment = run_sweep(SweepPlan("tiny", None, base_overrides(corpus, tmp_path), runs,
                                     ["model.attention.num_kv_heads", "model.attention.type"]))
    out = capsys.readouterr().out
    assert "skipping type=gqa_num_kv_heads=3" in out and "not divisible by num_kv_heads=3" in out
    # the data is tokenised before the first run's clock starts, not inside it
    assert out.index("tokenising train") < out.index("=== sweep run 1/3") and out.count("tokenising train") == 1
    manifest = json.loads((experiment / "sweep.json").read_text())
    assert [r["status"] for r in manifest["runs"]] == ["skipped", "finished", "finished", "finished"]

    plots = _record_plots(monkeypatch)
    out_dir = report([experiment])
    table = pd.read_csv(out_dir / "report.csv")
    assert list(table["attention"]) == ["mha", "gqa", "mqa"]  # MHA first, then the sweep's order
    assert (table["decode_spread"] >= 0).all()
    step_series, _ = plots["val_loss_vs_step.png"]
    assert all(x == [3, 6] for _, x in step_series.values())  # 1-based steps, as in the checkpoint names
    colours = [{label: colour for label, (colour, _) in plots[name][0].items()}
               for name in ("val_loss_vs_step.png", "val_loss_vs_time.png", "kv_cache_vs_loss.png")]
    assert colours[0] == colours[1] == colours[2] and len(set(colours[0].values())) == 3  # one colour per run
    assert plots["kv_cache_vs_loss.png"][1], "a point label is clipped"
    assert not table.drop(columns=["flags"]).isna().any().any()  # every column filled
    # analytic cache: 2 layers x (k, v) x n_kv x head_dim 8 x 4 bytes
    expected = {"mha": 2 * 2 * 4 * 8 * 4, "gqa": 2 * 2 * 2 * 8 * 4, "mqa": 2 * 2 * 1 * 8 * 4}
    for _, row in table.iterrows():
        assert row["kv_cache_bytes_per_token"] == expected[row["attention"]]
        assert row["kv_cache_vs_mha"] == expected[row["attention"]] / expected["mha"]
        assert row["train_tokens_per_s"] > 0 and row["decode_tokens_per_s"] > 0
    assert table.loc[table.attention == "mha", "quality_vs_mha"].item() == 1.0
    flags = table["flags"].fillna("")  # no config difference; a busy machine may add a decode-noise note only
    assert all(f == "" or f.startswith("decode speed noisy: rounds spread") for f in flags), list(flags)
    for name in ("val_loss_vs_step.png", "val_loss_vs_time.png", "kv_cache_vs_loss.png"):
        assert (out_dir / name).read_bytes()[:8] == PNG and (out_dir / name).stat().st_size > 5000
    text = (out_dir / "report.md").read_text()
    assert "| run | attention |" in text and "All runs share every setting" in text
    # cache kinds: bytes per token by kind, validation perplexity through each cache, decode speed
    kinds = pd.read_csv(report([experiment], tmp_path / "kinds", caches=["paged", "int8", "int4"]) / "report.csv")
    for _, row in kinds.iterrows():
        contiguous = row["kv_cache_bytes_per_token"]
        assert row["kv_bytes_paged"] == contiguous and row["kv_bytes_int4"] < row["kv_bytes_int8"] < contiguous / 3
        assert abs(row["ppl_change_paged"]) < 1e-5 and abs(row["ppl_change_int8"]) < 0.02  # blocks of 32 <= the exact window
        assert row["decode_tokens_per_s_int8"] > 0 and row["val_ppl_int4"] > 1
    assert "kv_bytes_KIND" in (tmp_path / "kinds" / "report.md").read_text()
    # a noisy decode measurement is a note about the measurement, not a fairness flag
    import transformer.compare as compare

    monkeypatch.setattr(compare, "decode_speeds", lambda ckpts, **kw: [{"median": 50.0, "spread": 0.6, "rounds": 5} for _ in ckpts])
    noisy = report([experiment], tmp_path / "noisy")
    text = (noisy / "report.md").read_text()
    assert "All runs share every setting" in text and "## Measurement notes" in text
    assert text.count("decode speed noisy: rounds spread 60% of the median") == 2 * 3  # table column + notes, per run


def test_unswept_difference_is_flagged_and_failed_run_does_not_stop_the_sweep(tmp_path, corpus, capsys):
    runs = [{"model.attention.type": "mha", "optim.lr": 0.003}, {"model.attention.type": "mqa", "optim.lr": 0.003},
            {"model.attention.type": "gqa", "model.attention.num_kv_heads": 2, "optim.lr": 0.001},
            {"model.attention.type": "mqa", "data.path": str(tmp_path / "missing.txt"), "optim.lr": 0.003}]
    experiment = run_sweep(SweepPlan("flags", None, base_overrides(corpus, tmp_path), runs,
                                     ["model.attention.type", "model.attention.num_kv_heads"]))
    statuses = [r["status"] for r in json.loads((experiment / "sweep.json").read_text())["runs"]]
    assert statuses == ["finished", "finished", "finished", "failed"]
    assert "missing.txt' does not exist" in capsys.readouterr().out
    table = pd.read_csv(report([experiment], measure_decode=False) / "report.csv")
    flagged = table[table["flags"].fillna("").str.contains("optim.lr")]
    assert list(flagged["attention"]) == ["gqa"] and math.isnan(table["decode_tokens_per_s"][0])


def test_sweep_cli_grid(tmp_path, corpus):
    code = main(["--sweep", "model.attention.type=mha,mqa", *base_overrides(corpus, tmp_path)])
    assert code == 0
    experiments = list((tmp_path / "runs").glob("default-sweep-*"))
    assert len(experiments) == 1 and len([d for d in experiments[0].iterdir() if d.is_dir()]) == 2
    assert main(["--sweep-config", str(tmp_path / "nope.yaml")]) == 2


def test_catalog_types_and_a_pattern_sweep_into_one_report(tmp_path, corpus, monkeypatch):
    runs = [{"model.attention.type": "mha"},
            {"model.attention.type": "linear", "model.attention.positional": "none", "model.attention.linear_decay": True},
            {"model.attention.type": "neighborhood", "model.attention.neighborhood_size": 8},
            {"model.attention_pattern": ["local", "global"],
             "model.attention_variants": {"local": {"sliding_window": 8}, "global": {"type": "differential"}}}]
    experiment = run_sweep(SweepPlan("catalog", None, base_overrides(corpus, tmp_path), runs, sorted({k for r in runs for k in r})))
    table = pd.read_csv(report([experiment], measure_decode=False) / "report.csv")
    assert table["attention"][0] == "mha"  # the plain MHA run is the reference, first
    rows = table.set_index("attention")
    assert sorted(rows.index) == ["linear", "mha", "mha+differential", "neighborhood"]
    assert rows["pattern"].fillna("-").to_dict() == {"mha": "-", "linear": "-", "neighborhood": "-", "mha+differential": "local,global"}
    mha_bytes = 2 * 2 * 4 * 8 * 4  # 2 layers x (k, v) x 4 heads x 8 x fp32
    assert rows["kv_cache_bytes_per_token"].to_dict() == {
        "mha": mha_bytes, "linear": 2 * 4 * 8 * 9 * 4 / 32,  # a fixed state n_kv * d * (d + 1) per layer, over 32 tokens
        "neighborhood": mha_bytes * 7 / 32,  # causal: a rolling window of 8 keeps 7 tokens
        "mha+differential": (mha_bytes / 2) * 7 / 32 + mha_bytes / 2}
    assert rows["attention_flops_per_token"]["neighborhood"] == rows["attention_flops_per_token"]["mha"] / 4  # 8 of 32 keys
    assert (table["peak_train_memory_mb"] > 0).all() and (table["train_tokens_per_s"] > 0).all()
    # --scaling: each run's attention layers per length, a pattern weighted by how many layers use each entry
    import transformer.scaling as scaling_module

    def fake_measure(case, length, **options):  # deterministic: a windowed layer costs its window, others 1000 keys
        _, layer = case.build()
        return {"seconds": length * (layer.sliding_window or 1000) * 1e-6, "peak_mib": float(layer.sliding_window or 1000)}

    real_scaling = scaling_module.scaling
    monkeypatch.setattr(scaling_module, "measure", fake_measure)
    monkeypatch.setattr(scaling_module, "scaling", lambda *a, **kw: real_scaling(*a, **{**kw, "isolate": False}))
    out = report([experiment], tmp_path / "scaled", measure_decode=False, scaling_lengths=[50, 250], scaling_rounds=2)
    labels = pd.read_csv(out / "report.csv").set_index("attention")["run"]
    scaled = pd.read_csv(out / "scaling.csv").set_index("run")
    assert list(scaled.columns) == ["ms@50", "ms@250", "peak_mib@50", "peak_mib@250"]
    assert scaled.loc[labels["mha"], "ms@250"] == 250.0  # 250 * 1000 us
    assert scaled.loc[labels["mha+differential"], "ms@250"] == 250 * (8 + 1000) / 2 / 1000  # ½ local (window 8) + ½ global
    assert scaled.loc[labels["mha+differential"], "peak_mib@250"] == (8 + 1000) / 2
    text = (out / "report.md").read_text()
    assert "## Attention scaling" in text and "![attention_scaling](attention_scaling.png)" in text
    assert (out / "attention_scaling.png").read_bytes()[:8] == PNG


def test_scaling_option_errors(tmp_path, capsys):
    import transformer.compare as compare

    for bad in ("512,abc", "0,64", ","):
        with pytest.raises(SystemExit) as stop:
            compare.main([str(tmp_path), "--scaling", bad])
        assert stop.value.code == 2 and f"--scaling {bad!r}: give positive whole lengths" in capsys.readouterr().err
