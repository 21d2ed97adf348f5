"""Time budgets: durations parse, the chain splits what is left, the loop fits its steps to seconds."""

from __future__ import annotations

import time

import pytest
import torch

from pipeline.budget import ChainBudget, parse_duration
from pipeline.training import TrainConfig, load_checkpoint, train


def test_durations_parse_with_units_and_bad_ones_are_named():
    assert parse_duration("600") == 600
    assert parse_duration("90s") == 90
    assert parse_duration("10m") == 600
    assert parse_duration("1.5h") == 5400
    for bad in ("ten minutes", "-5m", "0", "5d", ""):
        with pytest.raises(ValueError, match="time budget"):
            parse_duration(bad)


def test_each_stage_gets_its_share_of_what_is_left():
    budget = ChainBudget(100.0, {"pretrain": 1.0, "supernet": 1.0, "finetune": 2.0})
    assert budget.for_stage("pretrain") == pytest.approx(25.0, abs=0.5)
    budget.done("pretrain", 25.0)
    budget.started -= 55.0  # the first stage overran: 55 s gone, 45 left for shares 1 : 2
    assert budget.for_stage("supernet") == pytest.approx(15.0, abs=0.5)
    budget.done("supernet", 15.0)
    budget.started -= 15.0
    assert budget.for_stage("finetune") == pytest.approx(30.0, abs=0.5)
    with pytest.raises(ValueError, match="budget.shares has no stage 'search'"):
        budget.for_stage("search")
    with pytest.raises(ValueError, match="every share must be a positive number"):
        ChainBudget(10.0, {"pretrain": 0})


def _slow_loop(cfg: TrainConfig, tmp_path, step_s: float, resume: bool = False):
    torch.manual_seed(0)
    model = torch.nn.Linear(4, 1)
    x = torch.randn(64, 4)

    def step_loss(m, idx, step):
        time.sleep(step_s)
        return m(x[idx]).pow(2).mean()

    return train(model, step_loss, len(x), cfg, checkpoint=tmp_path / "ckpt.pt", resume=resume)


def _cfg(**kw) -> TrainConfig:
    base = dict(epochs=1, batch_size=8, lr=1e-2, weight_decay=0.0, warmup_steps=2, grad_clip=1.0,
                checkpoint_every=5, seed=0, threads=1)
    return TrainConfig(**base | kw)


def test_the_loop_fits_its_step_count_to_the_time_budget(tmp_path):
    t0 = time.perf_counter()
    res = _slow_loop(_cfg(time_budget_s=1.0, min_steps=5), tmp_path, step_s=0.02)
    took = time.perf_counter() - t0
    assert 30 <= res.steps <= 55, res.steps  # ~50 steps of 20 ms fit in 1 s; one epoch would be 8
    assert took < 4.0  # the loop itself ~1 s; the first optimizer step in a process pays for set-up
    assert load_checkpoint(tmp_path / "ckpt.pt")["total"] == res.steps  # recorded, for a replay without a clock


def test_a_time_budget_never_gives_fewer_than_min_steps(tmp_path):
    res = _slow_loop(_cfg(time_budget_s=0.01, min_steps=12), tmp_path, step_s=0.005)
    assert res.steps == 12


def test_max_steps_replays_without_the_clock(tmp_path):
    res = _slow_loop(_cfg(time_budget_s=0.01, min_steps=1, max_steps=17), tmp_path, step_s=0.0)
    assert res.steps == 17


def test_a_resumed_run_keeps_the_step_count_it_fixed(tmp_path):
    full = _slow_loop(_cfg(time_budget_s=0.5, min_steps=5, checkpoint_every=10), tmp_path, step_s=0.01)
    state = load_checkpoint(tmp_path / "ckpt.pt")
    state["step"], state["history"] = 10, state["history"][:10]  # as if killed after step 10
    torch.save(state, tmp_path / "ckpt.pt")
    resumed = _slow_loop(_cfg(time_budget_s=0.5, min_steps=5, checkpoint_every=10), tmp_path, step_s=0.03,
                         resume=True)
    assert resumed.steps == full.steps  # the same total, although each step is now 3x slower


def test_a_spent_budget_gives_min_steps_not_the_epochs(tmp_path):
    res = _slow_loop(_cfg(time_budget_s=0.0, min_steps=3, epochs=50), tmp_path, step_s=0.0)
    assert res.steps == 3  # a budget of 0 s is a budget, not "no budget" (50 epochs would be 400 steps)


def _fake_chain(monkeypatch, tmp_path, sleeps: dict[str, float], time_budget) -> dict[str, float | None]:
    """The chain with stand-in stages that sleep ``sleeps[name]`` s; returns each stage's time budget."""
    import argparse

    from pipeline import cli, cli_chain

    seen = {}

    def fake(name):
        def step(args):
            seen[name] = args.time_budget_s
            time.sleep(sleeps.get(name, 0.0))
            return 0
        return step

    for name in ("dataset", "pretrain", "supernet", "search", "finetune", "package"):
        monkeypatch.setattr(cli, f"cmd_stage_{name}", fake(name))
    monkeypatch.setattr(cli_chain, "_print_summary", lambda root, target: None)
    monkeypatch.setattr(cli_chain, "load_params", lambda root: {"budget": {"shares": {
        "pretrain": 1.0, "supernet": 1.0, "search": 1.0, "finetune": 1.0}}})
    assert cli_chain._run_chain(argparse.Namespace(root=tmp_path, target="t", time_budget=time_budget)) == 0
    return seen


def test_the_chain_clock_starts_after_the_dataset_stage(monkeypatch, tmp_path):
    seen = _fake_chain(monkeypatch, tmp_path, {"dataset": 0.3},  # the dataset stage is outside the budget
                       time_budget=2)  # a bare number, as YAML gives it
    assert seen["dataset"] is None and seen["package"] is None
    assert seen["pretrain"] == pytest.approx(0.5, abs=0.05)


def test_a_stage_left_under_half_its_share_is_warned_of_and_summed_up(monkeypatch, tmp_path, capsys):
    # the search's share is 0.5 s of the 2: it overruns into the fine-tune's
    seen = _fake_chain(monkeypatch, tmp_path, {"search": 1.85}, time_budget="2s")
    assert seen["finetune"] < 0.25
    out = capsys.readouterr().out
    assert out.count("warning: ") == 1 and "warning: finetune gets 0 s of its 0 s share" in out, out
    assert "cut short: finetune 0 of 0 s" in out
