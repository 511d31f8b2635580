"""Retrieval of training rows (TabR) for tabular regressors: against the paper's equations written out densely,
never retrieving a row's own target in training, chunked search, checkpoints, and runs that use it."""

import numpy as np
import pandas as pd
import pytest
import torch

from regression import retrieval
from regression.h_transformer import TabularRegressor
from regression.config import RegressorConfig
from regression.retrieval import NeighbourContext, repeated_share
from transformer.config import ModelConfig


def tabular(neighbours=5, dropout=0.0, cards=(3,)):
    cfg = ModelConfig(kind="encoder", vocab_size=1, embed_dim=16, num_heads=2, num_layers=1, max_seq_len=16, pooling="cls",
                      dropout=dropout, attention={"type": "mha", "positional": "none"})
    model = TabularRegressor(cfg, num_features=4, num_targets=2, cardinalities=list(cards),
                             regressor=RegressorConfig(linear_skip=False, retrieval=True, neighbours=neighbours))
    r = model.retrieval  # the values start at zero (the model starts as the plain FT-Transformer): not for these tests
    assert not r.label.weight.any() and not r.transfer[-1].weight.any()
    with torch.no_grad():
        for weight in (r.label.weight, r.label.bias, r.transfer[-1].weight):
            weight.normal_(0.0, 0.3)
    return model


def candidates(model, n=40, seed=0):
    g = torch.Generator().manual_seed(seed)
    x, cats, y = torch.randn(n, 4, generator=g), torch.randint(0, 3, (n, 1), generator=g), torch.randn(n, 2, generator=g)
    model.retrieval.fit_candidates(x.numpy(), cats.numpy(), y.numpy())
    return x, cats, y


def reference(module: NeighbourContext, tokens, tokens_of, rows=None):
    """TabR's context vector from its equations: all candidates' keys with gradients, a full sort, no chunks."""
    k = module.keys(tokens)  # [b, D]
    ck = module.keys(tokens_of(module.candidate_x, module.candidate_cats))  # [N, D]
    d = ((k[:, None] - ck[None]) ** 2).sum(-1)  # [b, N]
    out = []
    for i in range(len(k)):
        order = [j for j in torch.argsort(d[i].detach()).tolist() if rows is None or j != rows[i]][: module.neighbours]
        p = torch.softmax(-d[i, order], dim=0)
        v = module.label(module.candidate_y[order]) + module.transfer(k[i] - ck[order])
        out.append((p[:, None] * v).sum(0))
    return torch.stack(out)


def test_context_equals_the_dense_reference_in_value_and_gradient():
    torch.manual_seed(0)
    model = tabular().train()  # dropout 0: training mode only changes the search's self-exclusion
    candidates(model)
    x, cats, rows = model.retrieval.candidate_x[:6] + 0.01, model.retrieval.candidate_cats[:6], torch.arange(6)
    tokens = model.feature_tokens(x, cats)
    got = model.retrieval(tokens, model.feature_tokens, rows)
    want = reference(model.retrieval, tokens, model.feature_tokens, rows)
    torch.testing.assert_close(got, want, atol=1e-5, rtol=1e-5)
    params = [p for p in model.parameters() if p.requires_grad]
    g_got = torch.autograd.grad(got.square().sum(), params, allow_unused=True, retain_graph=True)
    g_want = torch.autograd.grad(want.square().sum(), params, allow_unused=True)
    for a, b in zip(g_got, g_want):
        assert (a is None) == (b is None)
        if a is not None:
            torch.testing.assert_close(a, b, atol=1e-5, rtol=1e-4)
    model.eval()  # evaluation: every candidate may be a neighbour
    with torch.no_grad():
        tokens = model.feature_tokens(x, cats)
        torch.testing.assert_close(model.retrieval(tokens, model.feature_tokens),
                                   reference(model.retrieval, tokens, model.feature_tokens), atol=1e-5, rtol=1e-5)


def test_a_training_row_never_reads_its_own_target():
    torch.manual_seed(1)
    model = tabular(neighbours=39).train()  # every other candidate is a neighbour
    x, cats, _ = candidates(model)
    rows = torch.arange(8)
    before = model(x[:8], cats[:8], rows=rows)
    for i in range(8):  # row i's own target changes: what row i predicts does not
        model.retrieval.candidate_y[i] += 1000.0
        after = model(x[i:i + 1], cats[i:i + 1], rows=rows[i:i + 1])
        torch.testing.assert_close(after, before[i:i + 1], atol=1e-5, rtol=1e-5)
        model.retrieval.candidate_y[i] -= 1000.0
    with pytest.raises(RuntimeError, match="index among the candidates"):
        model(x[:2], cats[:2])


def test_chunked_search_equals_one_chunk(monkeypatch):
    torch.manual_seed(2)
    model = tabular().eval()
    x, cats, _ = candidates(model, n=50)
    with torch.no_grad():
        whole = model(x[:7] + 0.1, cats[:7])
        monkeypatch.setattr(retrieval, "SEARCH_CHUNK", 6)
        torch.testing.assert_close(model(x[:7] + 0.1, cats[:7]), whole)
        model.train()
        rows = torch.tensor([0, 5, 6, 11, 12, 49])
        in_chunks = model(x[rows], cats[rows], rows=rows)
        monkeypatch.setattr(retrieval, "SEARCH_CHUNK", 65536)
        torch.testing.assert_close(model(x[rows], cats[rows], rows=rows), in_chunks)


def test_checkpoint_holds_the_candidates():
    torch.manual_seed(3)
    model = tabular().eval()
    x, cats, _ = candidates(model, n=30)
    fresh = tabular().eval()
    with pytest.raises(RuntimeError, match="no candidate rows"):
        fresh(x[:2], cats[:2])
    fresh.load_state_dict(model.state_dict())  # the empty buffers take the stored sizes
    with torch.no_grad():
        torch.testing.assert_close(fresh(x[:5], cats[:5]), model(x[:5], cats[:5]))


def test_retrieval_learns_what_a_smooth_function_cannot():
    """A panel: 60 units with random, feature-unrelated effects, each in 8 rows with the same covariates. A row's
    target is its unit's effect plus noise; only the unit's other rows tell the effect."""
    rng = np.random.default_rng(0)
    units = rng.normal(size=(60, 4)).astype(np.float32)
    effect = rng.normal(size=60).astype(np.float32) * 2
    unit = np.repeat(np.arange(60), 8)
    x = units[unit]
    y = (effect[unit] + 0.3 * rng.normal(size=len(unit))).astype(np.float32)[:, None]
    test = np.arange(len(unit)) % 8 == 0  # one row of each unit held out
    errors = {}
    for k in (0, 8):  # 0: no retrieval
        torch.manual_seed(0)
        cfg = ModelConfig(kind="encoder", vocab_size=1, embed_dim=32, num_heads=2, num_layers=1, max_seq_len=16,
                          pooling="cls", dropout=0.0, attention={"type": "mha", "positional": "none"})
        model = TabularRegressor(cfg, num_features=4, num_targets=1, regressor=RegressorConfig(linear_skip=False, retrieval=bool(k), neighbours=k or 32))
        train_x, train_y = torch.from_numpy(x[~test]), torch.from_numpy(y[~test])
        no_cats = torch.zeros(len(train_x), 0, dtype=torch.long)
        if k:
            model.retrieval.fit_candidates(train_x.numpy(), no_cats.numpy(), train_y.numpy())
        opt = torch.optim.AdamW(model.parameters(), lr=3e-3)
        for step in range(150):
            rows = torch.from_numpy(np.random.default_rng(step).choice(len(train_x), 64, replace=False))
            loss = torch.nn.functional.mse_loss(model(train_x[rows], no_cats[rows], **({"rows": rows} if k else {})), train_y[rows])
            opt.zero_grad()
            loss.backward()
            opt.step()
        with torch.no_grad():
            pred = model.eval()(torch.from_numpy(x[test]), torch.zeros(int(test.sum()), 0, dtype=torch.long))
        errors[k] = float(torch.sqrt(((pred - torch.from_numpy(y[test])) ** 2).mean()))
    assert errors[8] < 0.6 < errors[0], errors  # the noise is 0.3, the effects' spread 2


def test_tabular_run_with_neighbours_predicts_from_its_checkpoint_and_refits_after_init_from(tmp_path):
    from regression.cli import run
    from regression.predict import predict_file
    from transformer.cli import load_any_config

    rng = np.random.default_rng(0)
    frame = pd.DataFrame({"area": rng.uniform(30, 200, 300), "rooms": rng.integers(1, 6, 300), "city": rng.choice(["a", "b"], 300)})
    frame["price"] = 3000 * frame["area"] + 10000 * frame["rooms"] + rng.normal(0, 1000, 300)
    frame.to_csv(tmp_path / "houses.csv", index=False)
    common = [f"data.path={tmp_path / 'houses.csv'}", "data.feature_columns=[area,rooms]", "data.categorical_columns=[city]",
              "data.target_columns=[price]", "trainer.max_steps=10", "trainer.val_check_interval=5",
              "trainer.progress_bar=false", "model.num_layers=1", "regressor.retrieval=true", "regressor.neighbours=4"]
    first = run(load_any_config("configs/regression/csv_tabular.yaml", [f"out_dir={tmp_path / 'a'}", *common]))
    ckpt = next((first.run_dir / "checkpoints").glob("step*.ckpt"))
    out = predict_file(ckpt, tmp_path / "houses.csv", tmp_path / "p.csv")
    assert len(out) == 300 and out["pred_price"].notna().all() and out["pred_price"].mean() > 1000
    # a fine-tune from that run on another table retrieves from its own training rows
    frame.iloc[:200].to_csv(tmp_path / "fewer.csv", index=False)
    common[0] = f"data.path={tmp_path / 'fewer.csv'}"
    second = run(load_any_config("configs/regression/csv_tabular.yaml", [f"out_dir={tmp_path / 'b'}", f"init_from={ckpt}", *common]))
    state = torch.load(next((second.run_dir / "checkpoints").glob("step*.ckpt")), weights_only=False)["state_dict"]
    assert state["model.retrieval.candidate_x"].shape[0] == 140  # 70% of 200 rows


def test_retrieval_on_a_sequence_run_is_refused_and_auto_is_off_there():
    from transformer.cli import load_any_config

    with pytest.raises(ValueError, match="regressor.retrieval=true retrieves similar training rows of a table"):
        load_any_config("configs/regression/default.yaml", ["regressor.retrieval=true"])
    assert load_any_config("configs/regression/default.yaml", []).regressor.retrieval is None  # auto


def test_repeated_share_counts_rows_whose_features_recur():
    x = np.array([[1.0, 2.0], [1.0, 2.0], [1.0, 3.0], [0.0, 2.0], [1.0, 2.0]])
    assert repeated_share(x, np.zeros((5, 0), np.int64)) == pytest.approx(3 / 5)
    assert repeated_share(x, np.array([[1], [2], [1], [1], [1]])) == pytest.approx(2 / 5)  # a category tells them apart
    assert repeated_share(np.zeros((0, 2)), np.zeros((0, 0), np.int64)) == 0.0


@pytest.mark.parametrize("panel", [True, False])
def test_auto_retrieval_turns_on_for_a_panel_only_and_says_so(tmp_path, capsys, panel):
    from regression.cli import run
    from transformer.cli import load_any_config

    rng = np.random.default_rng(0)
    units = rng.normal(size=(40, 3))
    x = units[np.repeat(np.arange(40), 6)] if panel else rng.normal(size=(240, 3))
    frame = pd.DataFrame(x, columns=["a", "b", "c"]).assign(y=rng.normal(size=240))
    frame.to_csv(tmp_path / "t.csv", index=False)
    result = run(load_any_config("configs/regression/csv_tabular.yaml", [
        f"out_dir={tmp_path}", f"data.path={tmp_path / 't.csv'}", "data.feature_columns=[a,b,c]", "data.target_columns=[y]",
        "trainer.max_steps=4", "trainer.val_check_interval=2", "trainer.progress_bar=false", "model.num_layers=1"]))
    said = capsys.readouterr()
    expected = "on" if panel else "off"
    assert f"retrieval auto: {expected} (" in said.out + said.err
    state = torch.load(next((result.run_dir / "checkpoints").glob("step*.ckpt")), weights_only=False)
    assert state["run_config"]["regressor"]["retrieval"] is panel  # the checkpoint records the choice
    assert any(k.startswith("model.retrieval.") for k in state["state_dict"]) == panel
