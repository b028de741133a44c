import json
import os
import subprocess
import sys

import numpy as np
import pytest
import torch
from safetensors.torch import load_file

from cosdpo.data import RankingSet, make_schema
from cosdpo.evaluation.front import ndcg_report, ranker_front, score_base, score_conditioned
from cosdpo.models.ranker import BaseRanker, load_ranker
from cosdpo.training.loop import TrainConfig, lr_factor
from cosdpo.training.ltr import BaseConfig, FinetuneConfig, ListNetTask, WeightCOSTask, finetune, train_base

from .conftest import TINY

FT = dict(objectives=("quality1", "quality2"), batch_size=8, **TINY)


def test_base_training_beats_its_initialisation(tiny_fold, tiny_base):
    trained = load_ranker(tiny_base)
    torch.manual_seed(0)
    init = BaseRanker(trained.schema, trained.cfg).eval()
    init.norm.load_state_dict(trained.norm.state_dict())
    test = RankingSet.load(tiny_fold, "test", trained.schema)
    before = ndcg_report(test, score_base(init, test))["main"]
    after = ndcg_report(test, score_base(trained, test))["main"]
    assert after > before + 0.05
    metrics = json.loads((tiny_base / "metrics.json").read_text())
    assert metrics["epochs_run"] == 3 and metrics["train_seconds"] > 0


def test_finetuning_makes_w_steer_the_ranking(tiny_fold, tiny_base, tmp_path):
    model, metrics = finetune(
        tiny_fold, tiny_base, tmp_path / "ft", FinetuneConfig(**(FT | dict(epochs=15, lr=3e-3, batch_size=4)))
    )
    test = RankingSet.load(tiny_fold, "test", model.schema)
    front = ranker_front(model, test, np.array([[1.0, 0.0], [0.5, 0.5], [0.0, 1.0]]))
    (a1, a2), _, (b1, b2) = front["points"]
    assert a1 > b1 + 0.02 and b2 > a2 + 0.02  # each extreme wins its own objective
    assert front["hypervolume"] > front["base_hypervolume"]
    assert metrics["trainable_params"] < sum(p.numel() for p in model.parameters())  # the base is frozen


def _same_weights(dir_a, dir_b, atol=0.0):
    a, b = load_file(str(dir_a / "model.safetensors")), load_file(str(dir_b / "model.safetensors"))
    assert a.keys() == b.keys()
    for k in a:
        torch.testing.assert_close(a[k], b[k], atol=atol, rtol=0, msg=k)


def test_resume_after_an_epoch_equals_an_uninterrupted_run(tiny_fold, tiny_base, tmp_path):
    cfg = dict(FT, dropout=0.2, patience=0)  # dropout: the RNG state must be restored too
    finetune(tiny_fold, tiny_base, tmp_path / "straight", FinetuneConfig(epochs=3, **cfg))
    finetune(tiny_fold, tiny_base, tmp_path / "split", FinetuneConfig(epochs=1, **cfg))
    finetune(tiny_fold, tiny_base, tmp_path / "split", FinetuneConfig(epochs=3, **cfg), resume=True)
    _same_weights(tmp_path / "straight", tmp_path / "split")
    log = json.loads((tmp_path / "split" / "train_log.json").read_text())
    assert [r["epoch"] for r in log] == [1, 2, 3]


@pytest.mark.parametrize("schedule, warmup", [("constant", 0), ("cosine", 3)])
def test_resume_after_a_crash_mid_epoch(tiny_fold, tiny_base, tmp_path, monkeypatch, schedule, warmup):
    cfg = dict(FT, dropout=0.2, patience=0, checkpoint_every=2, lr_schedule=schedule, warmup_steps=warmup)
    finetune(tiny_fold, tiny_base, tmp_path / "straight", FinetuneConfig(epochs=2, **cfg))
    real_terms = WeightCOSTask.terms

    def crash_at_step_7(self, model, batch, step):  # 5 batches an epoch: the 3rd batch of epoch 2
        if step == 7:
            raise KeyboardInterrupt("power cut")
        return real_terms(self, model, batch, step)

    monkeypatch.setattr(WeightCOSTask, "terms", crash_at_step_7)
    with pytest.raises(KeyboardInterrupt):
        finetune(tiny_fold, tiny_base, tmp_path / "crashed", FinetuneConfig(epochs=2, **cfg))
    state = json.loads((tmp_path / "crashed" / "checkpoint" / "state.json").read_text())["state"]
    assert (state["global_step"], state["epoch"], state["step_in_epoch"]) == (6, 1, 1)
    assert not (tmp_path / "crashed" / "config.json").exists()

    def steps(run):
        return [json.loads(line) for line in (tmp_path / run / "steps.jsonl").read_text().splitlines()]

    assert [r["step"] for r in steps("crashed")] == list(range(1, 8))  # written as it went, up to the crash
    monkeypatch.setattr(WeightCOSTask, "terms", real_terms)
    finetune(tiny_fold, tiny_base, tmp_path / "crashed", FinetuneConfig(epochs=2, **cfg), resume=True)
    _same_weights(tmp_path / "straight", tmp_path / "crashed")
    # the resumed run rewrote the step its checkpoint did not hold: the log is the straight run's, line by line
    assert steps("crashed") == steps("straight") and len(steps("straight")) == 10
    first = steps("straight")[0]
    assert set(first) == {"step", "epoch", "loss", "loss/quality1", "loss/quality2", "w", "lr"}
    assert first["loss"] == pytest.approx(
        sum(w * first[f"loss/{o}"] for w, o in zip(first["w"], FT["objectives"])), rel=1e-5
    )  # lambda 0: the step objective is w . L


def test_steps_go_to_tensorboard_too(tiny_fold, tiny_base, tmp_path):
    pytest.importorskip("tensorboardX")
    finetune(tiny_fold, tiny_base, tmp_path / "tb", FinetuneConfig(epochs=1, report_to="tensorboard", **FT))
    events = list((tmp_path / "tb" / "runs").rglob("events.out.tfevents.*"))
    assert events and events[0].stat().st_size > 100
    assert len((tmp_path / "tb" / "steps.jsonl").read_text().splitlines()) == 5
    with pytest.raises(ValueError, match="--report-to wandb needs one of the packages"):
        FinetuneConfig(report_to="wandb", **FT)


def test_cosine_schedule_follows_torchs_cosine_annealing(tiny_fold, tiny_base, tmp_path):
    """The lr of the checkpoint's last step against torch's own CosineAnnealingLR over the same steps."""
    finetune(
        tiny_fold, tiny_base, tmp_path / "ft", FinetuneConfig(epochs=2, lr=3e-3, patience=0, lr_schedule="cosine", **FT)
    )
    meta = json.loads((tmp_path / "ft" / "checkpoint" / "optimizer.json").read_text())
    saved = [g["lr"] for g in meta["param_groups"]]
    total = 2 * 5  # 5 batches an epoch
    opt = torch.optim.SGD([torch.zeros(1, requires_grad=True)], lr=3e-3)
    sched = torch.optim.lr_scheduler.CosineAnnealingLR(opt, T_max=total)
    for _ in range(total - 1):
        opt.step()
        sched.step()
    assert saved == pytest.approx([sched.get_last_lr()[0]] * len(saved), rel=1e-9)
    assert saved[0] < 3e-3 * 0.03  # near the end of the decay, not the constant lr


@pytest.mark.parametrize("schedule", ["constant", "cosine"])
@pytest.mark.parametrize("warmup", [0, 1, 7])
def test_lr_factor_is_transformers_schedule_with_warmup(schedule, warmup):
    """Every step's factor against transformers' own schedulers over a 30-step run."""
    from transformers import get_constant_schedule_with_warmup, get_cosine_schedule_with_warmup

    total = 30
    opt = torch.optim.SGD([torch.zeros(1, requires_grad=True)], lr=1.0)
    sched = (
        get_cosine_schedule_with_warmup(opt, warmup, total)
        if schedule == "cosine"
        else get_constant_schedule_with_warmup(opt, warmup)
    )
    theirs = []
    for _ in range(total):
        theirs.append(opt.param_groups[0]["lr"])
        opt.step()
        sched.step()
    ours = [lr_factor(schedule, step, total, warmup) for step in range(total)]
    assert ours == pytest.approx(theirs, abs=1e-12)
    assert ours[0] == (0.0 if warmup else 1.0)


def test_a_warmup_as_long_as_the_run_is_refused_before_training(tiny_fold, tiny_base, tmp_path):
    with pytest.raises(ValueError, match=r"warmup_steps \(5\) must be fewer than the run's 5 steps"):
        finetune(tiny_fold, tiny_base, tmp_path / "ft", FinetuneConfig(epochs=1, warmup_steps=5, **FT))
    assert not (tmp_path / "ft" / "checkpoint").exists()


def test_nothing_is_overwritten_by_accident(tiny_fold, tiny_base, tmp_path):
    finetune(tiny_fold, tiny_base, tmp_path / "ft", FinetuneConfig(epochs=1, **FT))
    with pytest.raises(FileExistsError, match="--resume"):
        finetune(tiny_fold, tiny_base, tmp_path / "ft", FinetuneConfig(epochs=1, **FT))
    with pytest.raises(ValueError, match="different settings: \\['alpha'\\]"):
        finetune(tiny_fold, tiny_base, tmp_path / "ft", FinetuneConfig(epochs=2, alpha=0.7, **FT), resume=True)
    with pytest.raises(FileNotFoundError, match="no checkpoint"):
        finetune(tiny_fold, tiny_base, tmp_path / "new", FinetuneConfig(epochs=1, **FT), resume=True)


@pytest.mark.parametrize(
    "bad, match",
    [
        (dict(epochs=0), "epochs"),
        (dict(lr=-1), "lr"),
        (dict(alpha=0), "alpha"),
        (dict(penalty=-1), "penalty"),
        (dict(beta=0), "beta"),
        (dict(param="lora"), "param"),
        (dict(lr_schedule="linear"), "lr_schedule"),
        (dict(transform="rank"), "transform"),
        (dict(warmup_steps=-1), "warmup_steps"),
        (dict(max_steps=10, warmup_steps=10), "fewer than max_steps"),
        (dict(objectives=()), "at least one objective"),
        (dict(objectives=("a", "a")), "twice"),
        (dict(grades={"quality1": "sqrt"}), "grade transform"),
        (dict(d_model=10, n_heads=4), "divisible"),
    ],
)
def test_bad_config_fails_at_construction(bad, match):
    with pytest.raises(ValueError, match=match):
        FinetuneConfig(**({"objectives": ("quality1",)} | bad))
    with pytest.raises(ValueError):
        TrainConfig(batch_size=0)


def test_generic_letor_objectives_must_leave_the_base_input(tmp_path):
    rng = np.random.default_rng(0)
    lines = [
        # f9 and f10 spread over 0..100, so that their default log4 grades differ within a query
        f"{rng.integers(0, 3)} qid:{q} "
        + " ".join(f"{j}:{rng.random() * (100 if j > 8 else 1):.4f}" for j in range(1, 11))
        for q in range(12)
        for _ in range(5)
    ]
    path = tmp_path / "small.txt"
    path.write_text("\n".join(lines) + "\n")
    train_base(path, tmp_path / "b_all", BaseConfig(epochs=1, **TINY))
    with pytest.raises(ValueError, match="--exclude f9,f10"):
        finetune(path, tmp_path / "b_all", tmp_path / "ft", FinetuneConfig(objectives=("f9", "f10"), **TINY))
    train_base(path, tmp_path / "b", BaseConfig(epochs=1, exclude=("f9", "f10"), **TINY))
    model, _ = finetune(
        path, tmp_path / "b", tmp_path / "ft", FinetuneConfig(objectives=("f9", "f10"), epochs=1, **TINY)
    )
    assert model.schema.inputs == list(range(1, 9))


@pytest.mark.parametrize("method", ["base", "wcos", "tcos"])
def test_a_step_in_runs_of_similar_length_equals_one_padded_batch(tiny_fold, tiny_base, method):
    """Padding invariance of the training step: the batch split by length gives the one padded batch's
    per-objective sums, counts and gradients."""
    from cosdpo.models.ranker import ConditionedRanker, ScorerConfig
    from cosdpo.training.loop import batch_terms

    base = load_ranker(tiny_base)
    torch.manual_seed(0)
    if method == "base":
        data = RankingSet.load(tiny_fold, "train", base.schema)
        model, task = base.train(), ListNetTask(None, 10)
    else:
        cfg = FinetuneConfig(method=method, dropout=0.0, **FT)
        schema = make_schema(136, list(cfg.objectives))
        data = RankingSet.load(tiny_fold, "train", schema)
        data.ref = score_base(base, data)
        scorer = ScorerConfig(d_model=16, n_heads=2, n_layers=1, dropout=0.0)
        model = ConditionedRanker(base, schema, scorer, method=method)
        task = WeightCOSTask(cfg, None)
    model.train()
    for m in model.modules():  # no dropout: both sides must see the same network
        if isinstance(m, torch.nn.Dropout):
            m.p = 0.0
    groups = np.arange(len(data))[:24]
    assert len(data.length_buckets(groups)) >= 3 and np.ptp(data.sizes[groups]) >= 10

    def run(fn):
        model.zero_grad()
        sums, counts = fn()
        sums.sum().backward()
        return sums.detach(), counts, [p.grad.clone() for p in model.parameters() if p.grad is not None]

    whole = run(lambda: task.terms(model, data.batch(groups), 3))
    split = run(lambda: batch_terms(task, model, data, groups, 3, None))
    torch.testing.assert_close(split[0], whole[0], rtol=1e-5, atol=1e-6)
    assert torch.equal(split[1], whole[1])
    for a, b in zip(split[2], whole[2]):
        torch.testing.assert_close(a, b, rtol=1e-4, atol=1e-6)


@pytest.mark.slow
def test_two_processes_agree_with_one(tiny_fold, tiny_base, tmp_path):
    args = [
        "ltr",
        "finetune",
        "--data",
        str(tiny_fold),
        "--base",
        str(tiny_base),
        "--objectives",
        "quality1,quality2",
        "--epochs",
        "2",
        "--batch-size",
        "16",
        "--dropout",
        "0",
        "--d-model",
        "16",
        "--heads",
        "2",
        "--layers",
        "1",
        "--no-progress",
        "--min-steps",
        "0",
    ]
    env = os.environ | {"OMP_NUM_THREADS": "1"}
    subprocess.run([sys.executable, "-m", "cosdpo", *args, "--out", str(tmp_path / "one")], check=True, env=env)
    subprocess.run(
        [
            sys.executable,
            "-m",
            "accelerate.commands.launch",
            "--multi_gpu",
            "--num_processes",
            "2",
            "--num_machines",
            "1",
            "--mixed_precision",
            "no",
            "--dynamo_backend",
            "no",
            "-m",
            "cosdpo",
            *args,
            "--out",
            str(tmp_path / "two"),
        ],
        check=True,
        env=env,
    )
    assert json.loads((tmp_path / "two" / "metrics.json").read_text())["processes"] == 2
    _same_weights(tmp_path / "one", tmp_path / "two", atol=1e-4)
    # the optimizer's state is saved whole, by parameter name: two processes' checkpoint resumes on one
    ckpt = tmp_path / "two" / "checkpoint"
    names = set(json.loads((ckpt / "optimizer.json").read_text())["state"])
    assert names and names <= set(load_file(str(ckpt / "model.safetensors")))
    more = list(args)
    more[more.index("--epochs") + 1] = "3"
    before = json.loads((tmp_path / "two" / "train_log.json").read_text())
    subprocess.run(
        [sys.executable, "-m", "cosdpo", *more, "--out", str(tmp_path / "two"), "--resume"], check=True, env=env
    )
    after = json.loads((tmp_path / "two" / "train_log.json").read_text())
    assert len(after) == 3 and after[:2] == before  # continued, not started again
    subprocess.run([sys.executable, "-m", "cosdpo", *more, "--out", str(tmp_path / "three")], check=True, env=env)
    _same_weights(tmp_path / "three", tmp_path / "two", atol=1e-4)


@pytest.mark.slow
def test_optimizer_state_is_saved_whole_and_resumes_under_fsdp(tmp_path):
    """torch's FSDP2 on two CPU processes (tests/fsdp_checkpoint.py): the saved Adam state equals one unsharded
    process's, and a sharded model resumed from it takes the same next step as the run it continues."""
    script = os.path.join(os.path.dirname(__file__), "fsdp_checkpoint.py")
    env = os.environ | {"OMP_NUM_THREADS": "1"}
    run = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2", script, str(tmp_path)]
    subprocess.run(run, check=True, env=env)
    for r in (0, 1):
        got = json.loads((tmp_path / f"rank{r}.json").read_text())
        assert got["names"] == ["0.weight", "2.bias", "2.weight"]  # by name, the frozen bias left out
        assert got["state_vs_unsharded"] < 1e-6 and got["continued_vs_unsharded"] < 1e-6
        assert got["resumed_vs_continued"] == 0.0 and got["moved"] > 0.1


def test_scoring_many_weights_at_once_equals_one_at_a_time(tiny_fold, tiny_base, tmp_path):
    model, _ = finetune(tiny_fold, tiny_base, tmp_path / "ft", FinetuneConfig(epochs=1, **FT))
    test = RankingSet.load(tiny_fold, "test", model.schema)
    grid = np.array([[1.0, 0.0], [0.3, 0.7], [0.0, 1.0]])
    together = score_conditioned(model, test, grid, max_items=50)
    apart = np.stack([score_conditioned(model, test, [w])[0] for w in grid])
    np.testing.assert_allclose(together, apart, rtol=1e-5, atol=1e-5)
    assert not np.allclose(together[0], together[2])
    # every item is scored, in data order: the score of item i is the model's score of its own row
    g = 2
    items = slice(test.offsets[g], test.offsets[g + 1])
    b = test.batch([g])
    direct = model(b["x"], b["mask"], torch.tensor([0.3, 0.7]))[0].detach().numpy()
    np.testing.assert_allclose(together[1, items], direct, rtol=1e-5, atol=1e-5)


def test_checkpoints_carry_every_devices_random_state(monkeypatch):
    """The CPU's state and each CUDA device's (simulated here: this machine has no GPU) go out and come back."""
    import torch

    from cosdpo.training import checkpoint

    states = [torch.tensor([1, 2, 3], dtype=torch.uint8), torch.tensor([4, 5], dtype=torch.uint8)]
    restored = []
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 2)
    monkeypatch.setattr(torch.cuda, "get_rng_state_all", lambda: states)
    monkeypatch.setattr(torch.cuda, "set_rng_state_all", restored.extend)
    saved = checkpoint.rng_states()
    assert sorted(saved) == ["__cuda_rng__.0", "__cuda_rng__.1", "__torch_rng__"]
    torch.manual_seed(0)
    expected = torch.rand(3)
    torch.manual_seed(0)
    saved = checkpoint.rng_states() | {"optimizer.tensor": torch.zeros(1)}
    torch.rand(5)  # the state moves on
    checkpoint.set_rng_states(saved)
    assert torch.equal(torch.rand(3), expected)
    assert [s.tolist() for s in restored] == [[1, 2, 3], [4, 5]] and list(saved) == ["optimizer.tensor"]


def test_min_steps_outlast_epochs_and_early_stopping(tiny_fold, tiny_base, tmp_path, monkeypatch, capsys):
    """A validation that never improves stops a run at patience 1 after its second epoch, unless
    min_steps holds it; the run says its plan before it starts."""
    monkeypatch.setattr(WeightCOSTask, "validate", lambda self, model: 0.0)
    cfg = dict(FT, epochs=5, patience=1)  # 36 training queries, batch 8: 5 steps an epoch
    _, free = finetune(tiny_fold, tiny_base, tmp_path / "free", FinetuneConfig(**cfg))
    _, held = finetune(tiny_fold, tiny_base, tmp_path / "held", FinetuneConfig(**(cfg | {"min_steps": 12})))
    assert (free["steps"], held["steps"]) == (10, 15) and free["stopped_early"] and held["stopped_early"]
    assert held["w_draws"] == 3 * 36  # a w per query group: 36 training queries an epoch
    _, longer = finetune(
        tiny_fold, tiny_base, tmp_path / "long", FinetuneConfig(**(cfg | {"epochs": 1, "patience": 0, "min_steps": 7}))
    )
    assert longer["steps"] == 10 and longer["epochs_run"] == 2  # whole epochs, enough for 7 steps
    said = capsys.readouterr().out
    assert (
        "wcos: at most 25 optimizer steps (5 epochs of 5), early stopping (patience 1) from step 12; "
        "180 draws of w (one per query group)" in said
    )


def test_the_conditioned_models_least_budget_grows_with_k():
    two, five = ("quality1", "quality2"), ("quality1", "quality2", "query_url_clicks", "url_clicks", "dwell_time")
    assert FinetuneConfig(objectives=two).resolved_min_steps() == 300
    assert FinetuneConfig(objectives=five).resolved_min_steps() == 750
    assert FinetuneConfig(objectives=two, method="tcos").resolved_min_steps() == 300
    assert FinetuneConfig(objectives=two, fixed_weights=(0.5, 0.5)).resolved_min_steps() == 0
    assert FinetuneConfig(objectives=two, min_steps=7).resolved_min_steps() == 7


def test_a_w_per_group_weights_each_groups_loss_by_its_own_draw(tiny_fold, tiny_base, tmp_path):
    from cosdpo.losses import lipo

    model, _ = finetune(tiny_fold, tiny_base, tmp_path / "ft", FinetuneConfig(epochs=1, **FT))
    cfg = FinetuneConfig(epochs=1, alpha=0.5, **FT)  # a w per group: the default
    data = RankingSet.load(tiny_fold, "train", model.schema)
    data.ref = score_base(model.base, data)
    task = WeightCOSTask(cfg, None)
    groups = [3, 0, 7, 11]
    sums, counts = task.terms(model, data.batch(groups), step=4)
    w = task.group_weights(4, groups)
    assert not torch.allclose(w[0], w[1]) and torch.allclose(w.sum(1), torch.ones(4))
    expected = torch.zeros(2, dtype=torch.float64)
    for g, w_g in zip(groups, w):  # each group alone, unpadded, at its own w
        b = data.batch([g])
        s = model(b["x"], b["mask"], w_g, base_scores=b["ref"])
        for k in range(2):
            expected[k] += 2 * float(w_g[k]) * float(lipo(s, b["ref"], b["aux"][..., k], b["mask"], 1.0).detach())
    torch.testing.assert_close(sums.double(), expected, rtol=1e-5, atol=1e-6)
    assert counts.tolist() == [4, 4]
    torch.testing.assert_close(task.group_weights(4, [11]), w[3:])  # a group's draw ignores its batch
    torch.testing.assert_close(task.combine(sums / counts, 4), (sums / counts).mean())  # sum_k E[w_k] L_k
    _, metrics = finetune(tiny_fold, tiny_base, tmp_path / "group", cfg)
    assert metrics["w_draws"] == 36  # one epoch: each of the 36 training queries once
    with pytest.raises(ValueError, match="weight-sampling step"):
        FinetuneConfig(objectives=("quality1", "quality2"), weight_sampling="group", penalty=0.1)


def test_a_run_of_many_short_epochs_validates_about_fifty_times(tiny_fold, tiny_base, tmp_path):
    cfg = FinetuneConfig(**(FT | {"epochs": 1, "batch_size": 64, "min_steps": 120, "patience": 0}))  # 1 step an epoch
    _, metrics = finetune(tiny_fold, tiny_base, tmp_path / "ft", cfg)
    log = json.loads((tmp_path / "ft" / "train_log.json").read_text())
    validated = [r["epoch"] for r in log if "val" in r]
    assert metrics["steps"] == 120 and validated == list(range(3, 121, 3))  # every 3rd of 120 epochs: 40 times


FAULTS = """
import resource, sys, torch
from cosdpo.training.loop import keep_freed_memory
applied = keep_freed_memory() if sys.argv[1] == "keep" else None
def step():  # a step's activations: 48 blocks of 2 MiB, all freed at its end
    blocks = [torch.ones(1 << 19) for _ in range(48)]
    return sum(float(b[-1]) for b in blocks)
step()
before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
for _ in range(10):
    step()
print(applied, (resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before) / 10)
"""


@pytest.mark.skipif(sys.platform != "linux", reason="glibc's malloc")
def test_training_keeps_freed_memory_for_the_next_step():
    """By default glibc hands a step's freed activations back to the kernel and the next step faults
    them in again, page by page (all of them or about a tenth, as its adaptive thresholds happen to
    settle); after keep_freed_memory (which every CPU training run calls) it does not."""

    def faults(mode):
        out = subprocess.run([sys.executable, "-c", FAULTS, mode], capture_output=True, text=True, check=True)
        applied, per_step = out.stdout.split()
        return applied, float(per_step)

    pages = 48 * (2 << 20) // os.sysconf("SC_PAGE_SIZE")
    assert faults("default")[1] > pages / 20
    applied, per_step = faults("keep")
    assert applied == "True" and per_step < pages / 200
