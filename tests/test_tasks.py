"""Task generators, groups and metrics (recdsl.tasks): checked against independent computations."""
import itertools

import numpy as np
import pytest
import torch

from recdsl.tasks import IGNORE, TASK_NAMES, group, prefix_accuracy, scaled_accuracy, score, task


@pytest.mark.parametrize("name,order,abelian,solvable", [
    ("S3", 6, False, True), ("S4", 24, False, True), ("A4xZ5", 60, False, True), ("A5", 60, False, False),
    ("S5", 120, False, False), ("Z60", 60, True, True)])
def test_groups(name, order, abelian, solvable):
    g = group(name)
    assert g.order == order and g.is_abelian() == abelian and g.is_solvable() == solvable
    t = g.table
    assert (t[0] == np.arange(order)).all() and (t[:, 0] == np.arange(order)).all()      # identity first
    assert all(sorted(row) == list(range(order)) for row in t)                            # Latin square
    rng = np.random.default_rng(0)
    a, b, c = rng.integers(0, order, size=(3, 200))
    assert (t[t[a, b], c] == t[a, t[b, c]]).all()                                         # associative


def test_prefix_products_are_a_left_fold_of_permutations():
    g = group("S4")
    words = np.random.default_rng(1).integers(0, g.order, size=(5, 9))
    out = g.prefix_products(words)
    for w, o in zip(words, out):
        state = tuple(range(4))
        for x, y in zip(w, o):
            p = g.elements[x]
            state = tuple(p[i] for i in state)      # apply x after everything before it
            assert g.elements[y] == state


def _eval_mod5(text: str) -> int:
    # an independent oracle: Python's own precedence on digits and + - * ( ) only
    assert set(text) <= set("01234+-*() ")
    return eval(text) % 5   # noqa: S307 - the text is generated above, from a fixed alphabet


def test_mod_arithmetic_answers_match_python_precedence():
    t = task("mod_arithmetic")
    rng = np.random.default_rng(2)
    for n in (1, 3, 5, 9, 21):
        tokens, labels = t.sample(rng, n)
        text = "".join(t.vocab[i] for i in tokens[:-2])
        assert t.vocab[tokens[-2]] == "=" and tokens[-1] == 0
        assert t.vocab[labels[-1]] == str(_eval_mod5(text)) and labels[:-1] == [IGNORE] * (len(tokens) - 1)


def test_bracketed_expressions_have_the_length_and_value_asked():
    t = task("mod_arithmetic_brackets")
    rng = np.random.default_rng(3)
    for n in range(1, 40):
        tokens, labels = t.sample(rng, n)
        symbols = [t.vocab[i] for i in tokens[:-2]]
        assert len(symbols) == n
        assert t.vocab[labels[-1]] == str(_eval_mod5(" ".join(symbols).replace("- ", "-")))


def test_running_labels_of_fan_et_al():
    rng = np.random.default_rng(4)
    tokens, labels = task("sum_5").sample(rng, 30)
    assert labels == [int(sum(x - 1 for x in tokens[:i + 1]) % 5) + 1 for i in range(30)]
    t = task("even_pair_5")
    tokens, labels = t.sample(rng, 30)
    assert [t.vocab[y] for y in labels] == ["yes" if x == tokens[0] else "no" for x in tokens]
    t = task("mod_arith_5")
    tokens, labels = t.sample(rng, 15)
    for i in range(0, 15, 2):
        assert t.vocab[labels[i]] == str(_eval_mod5("".join(t.vocab[x] for x in tokens[:i + 1])))
        assert i + 1 >= 15 or labels[i + 1] == IGNORE


def test_final_token_tasks():
    rng = np.random.default_rng(5)
    tokens, labels = task("parity").sample(rng, 17)
    assert labels[-1] == 1 + sum(x == 2 for x in tokens[:-1]) % 2
    t = task("cycle_navigation")
    tokens, labels = t.sample(rng, 25)
    pos = sum({"stay": 0, "+1": 1, "-1": -1}[t.vocab[x]] for x in tokens[:-1]) % 5
    assert t.vocab[labels[-1]] == f"p{pos}"
    t = task("even_pairs")
    tokens, labels = t.sample(rng, 8)
    assert t.vocab[labels[-1]] == ("yes" if tokens[0] == tokens[-2] else "no")


def test_copy():
    t = task("copy")
    assert len(t.vocab) == 29
    tokens, labels = t.sample(np.random.default_rng(6), 7)
    text = [t.vocab[i] for i in tokens]
    assert text[0] == "<bos>" and text[8] == "|" and text[9:] == text[1:7]
    assert [t.vocab[y] for y in labels if y != IGNORE] == text[1:8]


@pytest.mark.parametrize("name", TASK_NAMES)
def test_batches_are_deterministic_padded_and_in_vocab(name):
    t = task(name)
    b1 = t.batch(16, 3, 12, np.random.default_rng(7))
    b2 = t.batch(16, 3, 12, np.random.default_rng(7))
    assert torch.equal(b1.tokens, b2.tokens) and torch.equal(b1.labels, b2.labels)
    assert int(b1.tokens.max()) < len(t.vocab) and int(b1.tokens.min()) >= 0
    sup = b1.labels[b1.labels != IGNORE]
    assert len(sup) and int(sup.max()) < len(t.vocab) and int(sup.min()) > 0
    assert int(b1.lengths.min()) >= 3 and int(b1.lengths.max()) <= 12
    if t.odd_only:
        assert (b1.lengths % 2 == 1).all()


@pytest.mark.parametrize("name", ["word_S3", "word_A5"])
def test_word_batches_hold_each_rows_prefix_products(name):
    """The batch-at-once sampler against the definition: row b's labels are the prefix products of its
    own word, its padding is unsupervised."""
    t = task(name)
    g = group(name.removeprefix("word_"))
    b = t.batch(32, 1, 20, np.random.default_rng(3))
    assert b.tokens.dtype == torch.long and b.tokens.shape[1] == int(b.lengths.max())
    for tokens, labels, n in zip(b.tokens.numpy(), b.labels.numpy(), b.lengths.tolist()):
        word = tokens[None, :n] - 1
        assert (word >= 0).all() and (tokens[n:] == 0).all() and (labels[n:] == IGNORE).all()
        assert (labels[:n] == g.prefix_products(word)[0] + 1).all()


def test_parity_and_mod_arithmetic_batches_match_their_definitions():
    """The batch-at-once samplers, row by row: parity of the bits; the expression's value under Python's
    precedence mod 5; the answer after "=" at the padding position, the only label."""
    b = task("parity").batch(64, 1, 30, np.random.default_rng(5))
    for tokens, labels, n in zip(b.tokens.tolist(), b.labels.tolist(), b.lengths.tolist()):
        assert all(t in (1, 2) for t in tokens[:n]) and all(t == 0 for t in tokens[n:])
        assert labels[n] == 1 + sum(t - 1 for t in tokens[:n]) % 2
        assert [y for i, y in enumerate(labels) if i != n] == [IGNORE] * (len(labels) - 1)
    t = task("mod_arithmetic")
    b = t.batch(64, 1, 31, np.random.default_rng(6))
    for tokens, labels, n in zip(b.tokens.tolist(), b.labels.tolist(), b.lengths.tolist()):
        text = "".join(t.vocab[i] for i in tokens[:n])
        assert t.vocab[tokens[n]] == "=" and all(x == 0 for x in tokens[n + 1:])
        assert t.vocab[labels[n + 1]] == str(_eval_mod5(text)), text
        assert sum(y != IGNORE for y in labels) == 1


def test_metrics():
    assert scaled_accuracy(1.0, 2) == 1.0 and scaled_accuracy(0.5, 2) == 0.0 and scaled_accuracy(0.2, 5) == 0.0
    labels = torch.tensor([[5, 6, 7, IGNORE], [5, 6, IGNORE, IGNORE], [1, 2, 3, 4]])
    pred = torch.tensor([[5, 6, 0, 0], [5, 0, 0, 0], [1, 2, 3, 4]])
    # length 1: all right; 2: rows 0 and 2; 3: rows 0, 2 reach it, only row 2 right; 4: row 2
    assert prefix_accuracy(pred, labels).tolist() == pytest.approx([1.0, 2 / 3, 1 / 2, 1.0])
    t = task("parity")
    b = t.batch(64, 3, 10, np.random.default_rng(8))
    perfect = score(t, b.labels.clamp_min(0), b)
    assert perfect["accuracy"] == 1.0 and perfect["scaled_accuracy"] == 1.0
    s = score(t, torch.ones_like(b.labels), b)      # always "0": about chance
    assert abs(s["scaled_accuracy"]) < 0.5


def test_unknown_names_are_clear():
    with pytest.raises(ValueError, match="unknown task 'parityy'"):
        task("parityy")
    with pytest.raises(ValueError, match="unknown group"):
        group("S7")
    with pytest.raises(ValueError, match="lengths are odd"):
        task("mod_arithmetic").batch(2, 4, 4, np.random.default_rng(0))
    assert list(itertools.islice(TASK_NAMES, 1)) == ["parity"]


# ---- training (reference backend on the CPU) -------------------------------------------------------------

def _cfg(spec, **kw):
    from recdsl.tasks.train import TrainConfig
    from conftest import example
    base = dict(task="parity", d_model=16, steps=800, lr=3e-3, batch=64, train_len=(2, 10), test_len=(8, 12),
                seed=0, backend="reference", params=(("D", 16.0), ("N", 4.0)))
    return TrainConfig(example(spec), **{**base, **kw})


def test_signed_eigenvalues_learn_parity_where_unit_interval_cannot(tmp_path):
    """Grazzi et al. 2025 at toy size: eigenvalues in (-1, 1) solve parity beyond the training lengths,
    eigenvalues in (0, 1) stay near chance (a few seconds on the reference backend)."""
    import io
    from recdsl.tasks.train import evaluate, load_checkpoint, train
    scaled = {}
    for spec in ("mamba_negeig", "mamba"):
        train(_cfg(spec), str(tmp_path / spec), log=io.StringIO())
        model, cfg = load_checkpoint(str(tmp_path / spec / "checkpoint.pt"), device="cpu")
        scaled[spec] = [r["scaled_accuracy"] for r in evaluate(model, cfg, [8, 10, 12], samples=256)]
    assert min(scaled["mamba_negeig"]) >= 0.9, scaled
    assert max(scaled["mamba"]) <= 0.5, scaled


def test_resume_continues_the_same_run_and_eval_writes_json_and_plot(tmp_path):
    import io
    import json
    from recdsl.tasks.train import evaluate, load_checkpoint, train, write_eval
    import dataclasses
    cfg = _cfg("mamba_negeig", steps=12, checkpoint_every=100)
    train(cfg, str(tmp_path / "once"), log=io.StringIO())
    train(cfg, str(tmp_path / "twice"), log=io.StringIO(), stop_at=7)     # interrupted after step 7
    train(cfg, str(tmp_path / "twice"), resume=True, log=io.StringIO())
    a, _ = load_checkpoint(str(tmp_path / "once" / "checkpoint.pt"), device="cpu")
    b, _ = load_checkpoint(str(tmp_path / "twice" / "checkpoint.pt"), device="cpu")
    for (k, x), (_, y) in zip(a.state_dict().items(), b.state_dict().items()):
        assert torch.equal(x, y), k
    with pytest.raises(ValueError, match="another configuration"):
        train(dataclasses.replace(cfg, lr=1.0), str(tmp_path / "twice"), resume=True, log=io.StringIO())
    path = write_eval(evaluate(a, cfg, [8, 12], samples=8), cfg, str(tmp_path / "once"))
    assert [r["length"] for r in json.loads(path.read_text())["results"]] == [8, 12]
    assert (tmp_path / "once" / "eval.png").stat().st_size > 0


def test_tasks_cli(tmp_path, capsys):
    import json
    from recdsl.cli import main
    from conftest import example
    assert main(["tasks", "list"]) == 0
    assert "word_A5" in capsys.readouterr().out
    out = str(tmp_path / "run")
    assert main(["tasks", "train", "--spec", example("hgrn"), "--task", "sum_5", "--steps", "3", "--batch", "4",
                 "--train-len", "3-6", "--test-len", "6", "--d-model", "8", "-p", "D=8", "--backend", "reference",
                 "--out", out]) == 0
    assert main(["tasks", "eval", f"{out}/checkpoint.pt", "--samples", "4"]) == 0
    assert "wrote" in capsys.readouterr().out
    for bad in (["--train-len", "9-3"], ["--clip", "-1"], ["--val-every", "-5"], ["--val-every", "1e3"]):
        with pytest.raises(SystemExit):
            main(["tasks", "train", "--spec", example("hgrn"), "--task", "sum_5", *bad, "--out", out])
        assert bad[1] in capsys.readouterr().err
    suite = tmp_path / "suite"
    assert main(["tasks", "suite", "--specs", example("hgrn"), example("lru"), "--tasks", "sum_5", "parity",
                 "--steps", "2", "--batch", "4", "--train-len", "3-5", "--test-len", "4-6", "--points", "2",
                 "--samples", "4", "-p", "D=8", "--d-model", "8", "--backend", "reference", "--out", str(suite)]) == 0
    table = (suite / "suite.md").read_text().splitlines()
    assert table[2] == "| spec | sum_5 | parity |" and [r.split(" | ")[0] for r in table[4:6]] == ["| hgrn", "| lru"]
    results = json.loads((suite / "suite.json").read_text())["results"]
    assert set(results) == {"sum_5", "parity"} and [r["length"] for r in results["parity"]["lru"]] == [4, 6]
    assert (suite / "suite_parity.png").stat().st_size > 0 and (suite / "sum_5" / "hgrn" / "eval.json").exists()


def test_time_limit_stops_cleanly_and_the_budget_is_recorded(tmp_path):
    """A run out of time stops after the step it is in, checkpointed with its budget; resuming goes on
    to the configured steps. (No assertion on how long anything took.)"""
    import io
    from recdsl.tasks.train import load_run, train
    cfg = _cfg("mamba_negeig", steps=5, checkpoint_every=100)
    log = io.StringIO()
    out = train(cfg, str(tmp_path / "r"), log=log, max_seconds=1e-9)
    assert out["budget"]["steps_done"] == 1 and out["budget"]["stopped_by"] == "time"
    assert "stopped by the time limit after 1 of 5 steps" in log.getvalue() and "ms/step" in log.getvalue()
    _, _, budget = load_run(str(tmp_path / "r" / "checkpoint.pt"), device="cpu")
    assert budget["steps_done"] == 1 and budget["device"].startswith("cpu") and budget["train_seconds"] >= 0
    out = train(cfg, str(tmp_path / "r"), resume=True, log=io.StringIO())
    assert out["budget"]["steps_done"] == 5 and out["budget"]["stopped_by"] == "steps"


def test_curriculum_and_odd_only_evaluation_lengths():
    import dataclasses
    from recdsl.tasks.train import train_lengths
    cfg = _cfg("mamba", train_len=(16, 128), curriculum=4)
    assert [train_lengths(cfg, s) for s in range(6)] == [(16, 44), (16, 72), (16, 100), (16, 128), (16, 128),
                                                        (16, 128)]
    assert train_lengths(dataclasses.replace(cfg, curriculum=0), 0) == (16, 128)


def test_suite_entries_merge_and_show_the_papers_numbers(tmp_path):
    """Variants of one file side by side (PATH:NAME=VALUE), one call per case into a shared folder, the
    paper's number beside ours where the run matches the paper's setting."""
    import io
    import json
    from recdsl.tasks.suite import parse_entry, run_suite
    from conftest import example
    base = _cfg("mamba", steps=2, batch=4, params=(("D", 4.0), ("N", 2.0)), d_model=8)
    e = parse_entry(example("mamba_negeig") + ":layers=2,N=3")
    assert e.label == "mamba_negeig(layers=2,N=3)" and e.folder == "mamba_negeig_layers_2_N_3"
    assert e.config(base, "parity").layers == 2 and dict(e.config(base, "parity").params)["N"] == 3
    with pytest.raises(ValueError, match="PATH:NAME=VALUE"):
        parse_entry(example("mamba") + ":layers=two")
    run_suite(base, [e], ["parity"], str(tmp_path), [6, 8], samples=4, log=io.StringIO())
    run_suite(base, [example("mamba")], ["parity"], str(tmp_path), [6, 8], samples=4, log=io.StringIO(),
              max_seconds=1e-9)
    saved = json.loads((tmp_path / "suite.json").read_text())
    assert list(saved["results"]["parity"]) == ["mamba_negeig(layers=2,N=3)", "mamba"]
    runs = saved["runs"]["parity"]
    assert runs["mamba_negeig(layers=2,N=3)"]["paper"]["value"] == 1.0     # Grazzi et al. Table 3, 2 layers
    assert runs["mamba"]["paper"] is None                                   # 1 layer: not the paper's setting
    assert runs["mamba"]["budget"]["stopped_by"] == "time"
    md = (tmp_path / "suite.md").read_text()
    assert "(paper 1.000)" in md and "Grazzi et al. 2025, Table 3" in md and "(time limit)" in md
    assert json.loads((tmp_path / "parity" / "mamba" / "eval.json").read_text())["budget"]["steps_done"] == 1


def test_validation_keeps_the_best_model_and_the_suite_reports_it(tmp_path):
    """--val-every: the model is scored every N steps on a validation split (other sequences than the
    test's), the best is kept in best.pt with its step and score, a resumed run keeps its pick, a fresh
    run drops an old one, and the suite evaluates that model too, as '<label> picked'."""
    import io
    import json
    import dataclasses
    from recdsl.tasks.suite import run_suite
    from recdsl.tasks.train import evaluate, load_run, train, validation_lengths
    cfg = _cfg("mamba_negeig", steps=12, batch=8, val_every=4, checkpoint_every=4)
    log = io.StringIO()
    train(cfg, str(tmp_path / "r"), log=log, stop_at=8)
    lines = [l for l in log.getvalue().splitlines() if "validation" in l]
    assert [l.split()[2] for l in lines] == ["4/12", "8/12"]
    best = torch.load(tmp_path / "r" / "best.pt", weights_only=False)
    assert best["step"] in (4, 8) and "optimizer" not in best
    scores = [float(l.split("validation ")[1].split()[0]) for l in lines]
    assert best["validation"] == pytest.approx(max(scores), abs=1e-4)
    log = io.StringIO()
    train(cfg, str(tmp_path / "r"), resume=True, log=log)
    assert "(best" in log.getvalue() and "12/12 validation" in log.getvalue()
    assert torch.load(tmp_path / "r" / "best.pt", weights_only=False)["validation"] >= best["validation"]
    train(dataclasses.replace(cfg, val_every=0, steps=2), str(tmp_path / "r"), log=io.StringIO())
    assert not (tmp_path / "r" / "best.pt").exists()
    # a checkpoint written before clip and val_every existed resumes as a run with their defaults
    old = torch.load(tmp_path / "r" / "checkpoint.pt", weights_only=False)
    for key in ("clip", "val_every"):
        del old["config"][key]
    old["step"] = 1
    torch.save(old, tmp_path / "r" / "checkpoint.pt")
    log = io.StringIO()
    train(dataclasses.replace(cfg, val_every=0, steps=2), str(tmp_path / "r"), resume=True, log=log)
    assert "steps 1->2" in log.getvalue()
    model, c, _ = load_run(str(tmp_path / "r" / "checkpoint.pt"))
    lengths = validation_lengths(cfg)
    assert lengths[0] == cfg.test_len[0] and lengths[-1] == cfg.test_len[1]
    val = evaluate(model, c, lengths, samples=8, split="validation")
    assert evaluate(model, c, lengths, samples=8, split="validation") == val     # the same sequences each time
    with pytest.raises(ValueError, match="split must be one of"):
        evaluate(model, c, lengths, samples=8, split="train")
    example_entry = _entry("mamba_negeig")
    run_suite(cfg, [example_entry], ["parity"], str(tmp_path / "s"), [8, 12], samples=4, log=io.StringIO())
    saved = json.loads((tmp_path / "s" / "suite.json").read_text())
    runs = saved["runs"]["parity"]
    assert set(runs) == {example_entry.label, f"{example_entry.label} picked"}
    assert runs[f"{example_entry.label} picked"]["checkpoint"] == "best.pt"
    assert (tmp_path / "s" / "parity" / example_entry.folder / "eval_picked.json").exists()
    assert "picked" in (tmp_path / "s" / "suite.md").read_text()


def _entry(spec):
    from recdsl.tasks.suite import parse_entry
    from conftest import example
    return parse_entry(example(spec))


def test_mod_arithmetic_evaluates_at_odd_lengths(tmp_path):
    import io
    from recdsl.tasks.train import evaluate, load_checkpoint, train
    cfg = _cfg("mamba", task="mod_arithmetic", steps=1, batch=4, train_len=(3, 7))
    train(cfg, str(tmp_path), log=io.StringIO())
    model, cfg = load_checkpoint(str(tmp_path / "checkpoint.pt"), device="cpu")
    assert [r["length"] for r in evaluate(model, cfg, [6, 9, 10], samples=4)] == [7, 9, 9]


# ---- what the CUDA-graph training step relies on (the capture itself is in test_gpu.py) ---------------

def test_lr_schedule_warms_up_then_decays():
    from recdsl.tasks.train import lr_factor
    cfg = _cfg("mamba", steps=110, warmup=10, lr_decay="cosine")
    f = [lr_factor(cfg, s) for s in range(110)]
    assert f[0] == pytest.approx(0.1) and f[9] == pytest.approx(1.0) and f[10] == pytest.approx(1.0)
    assert all(a >= b for a, b in zip(f[10:], f[11:])) and f[60] == pytest.approx(0.5, abs=1e-3)
    assert lr_factor(cfg, 110) == pytest.approx(1e-3)
    assert lr_factor(_cfg("mamba", steps=110, warmup=10), 100) == 1.0
    with pytest.raises(ValueError, match="lr_decay must be one of"):
        lr_factor(_cfg("mamba", lr_decay="linear"), 0)


def test_gradient_clipping_is_an_option_and_zero_turns_it_off():
    """Grazzi et al.'s runs do not clip; ours clip to 1 unless told (--clip, or clip= in a suite entry)."""
    from recdsl.tasks.graphed import clip_gradients
    from recdsl.tasks.suite import parse_entry
    from conftest import example
    layer = torch.nn.Linear(4, 4)

    def norm_after(clip):
        layer.weight.grad = torch.full((4, 4), 3.0)
        layer.bias.grad = torch.full((4,), 3.0)
        clip_gradients(layer, clip)
        return torch.cat([layer.weight.grad.flatten(), layer.bias.grad]).norm().item()
    assert norm_after(0.0) == pytest.approx(3.0 * 20 ** 0.5)
    assert norm_after(1.0) == pytest.approx(1.0, rel=1e-5)
    with pytest.raises(ValueError, match="clip must be >= 0"):
        norm_after(-1.0)
    assert parse_entry(example("mamba") + ":clip=0").config(_cfg("mamba"), "parity").clip == 0.0
    assert _cfg("mamba").clip == 1.0


@pytest.mark.parametrize("name", ["parity", "mod_arithmetic", "word_S3", "copy"])
def test_padded_width_holds_every_training_batch(name):
    from recdsl.tasks.train import padded_width
    cfg = _cfg("mamba", task=name, train_len=(3, 21))
    width = padded_width(task(name), cfg)
    widths = {task(name).batch(8, 3, 21, np.random.default_rng(i)).tokens.shape[1] for i in range(40)}
    assert max(widths) == width


@pytest.mark.parametrize("spec", ["mamba_negeig", "deltanet_negeig"])
def test_right_padding_leaves_loss_and_gradients_unchanged(spec):
    """The graphed step pads every batch to one width; the models are causal and padding unsupervised,
    so the loss and every gradient equal the unpadded batch's."""
    import torch.nn.functional as F
    from recdsl.tasks.train import TaskModel
    cfg = _cfg(spec, params=(("D", 8.0), ("N", 2.0)) if spec.startswith("mamba") else (("H", 2.0), ("K", 4.0), ("V", 4.0)),
               d_model=8, layers=2)
    torch.manual_seed(0)
    model = TaskModel(cfg, 3).double()
    b = task("parity").batch(6, 3, 9, np.random.default_rng(1))
    grads = []
    for pad in (0, 7):
        tokens = torch.nn.functional.pad(b.tokens, (0, pad))
        labels = torch.nn.functional.pad(b.labels, (0, pad), value=IGNORE)
        model.zero_grad()
        loss = F.cross_entropy(model(tokens).flatten(0, 1), labels.flatten(), ignore_index=IGNORE)
        loss.backward()
        grads.append([loss.detach()] + [p.grad.clone() for p in model.parameters()])
    for a, c in zip(*grads):
        torch.testing.assert_close(a, c, rtol=1e-9, atol=1e-12)


def test_optimizer_switches_between_eager_and_capturable_state():
    from recdsl.tasks.graphed import set_capturable
    p = torch.nn.Parameter(torch.ones(3))
    opt = torch.optim.AdamW([p], lr=0.01)
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda s: 0.5)
    p.grad = torch.ones(3)
    opt.step()
    set_capturable(opt, True, "cpu")
    g = opt.param_groups[0]
    assert g["capturable"] and isinstance(g["lr"], torch.Tensor) and float(g["lr"]) == pytest.approx(0.005)
    lr = g["lr"]
    sched.step()                                   # a tensor lr is updated in place: a graph sees it
    assert g["lr"] is lr and float(lr) == pytest.approx(0.005)
    set_capturable(opt, False, "cpu")
    assert g["capturable"] is False and g["lr"] == pytest.approx(0.005) and isinstance(g["lr"], float)
    opt.step()                                     # eager again: steps on


def test_suites_sharing_a_folder_keep_each_others_runs(tmp_path):
    """reproduce_tasks.sh runs a part's cases as parallel processes into one folder: each adds its run."""
    import io
    import json
    from recdsl.tasks.suite import run_suite
    base = _cfg("hgrn", task="sum_5", steps=2, batch=4, train_len=(3, 5), d_model=8, params=(("D", 8.0),))
    from conftest import example
    for spec in ("hgrn", "lru"):       # one after the other, as two processes finishing would
        run_suite(base, [example(spec)], ["sum_5"], str(tmp_path), [4, 6], samples=4, log=io.StringIO())
    saved = json.loads((tmp_path / "suite.json").read_text())
    assert set(saved["results"]["sum_5"]) == {"hgrn", "lru"} and set(saved["runs"]["sum_5"]) == {"hgrn", "lru"}
    rows = [r.split(" | ")[0] for r in (tmp_path / "suite.md").read_text().splitlines() if r.startswith("| ")]
    assert "| hgrn" in rows and "| lru" in rows


def test_fla_block_has_its_norms_mlp_and_initialisation(tmp_path):
    """--block fla: RMSNorm, a SwiGLU MLP 512 wide at d_model 128, no biases; the spec layer's linears
    Xavier-uniform with gain 2^-2.5 and its convolutions PyTorch's, the rest std 0.02 with the MLP's down
    map scaled by 1 / sqrt(2 * layers); it trains and resumes from its checkpoint; an unknown block is
    refused by name."""
    import io
    import dataclasses
    from pathlib import Path
    from torch import nn
    from recdsl.tasks.train import SwiGLU, TaskModel, load_checkpoint, train
    cfg = _cfg("deltanet_negeig", task="mod_arithmetic", d_model=128, layers=2, block="fla",
               params=(("H", 4.0), ("K", 32.0), ("V", 32.0)), steps=3, batch=4, train_len=(3, 9))
    torch.manual_seed(0)
    model = TaskModel(cfg, vocab=10)
    assert all(isinstance(n, nn.RMSNorm) and n.eps == 1e-6 for n in model.norms)
    assert all(isinstance(m, SwiGLU) and m.down.in_features == 512 for m in model.mlps)
    linears = [m for m in model.modules() if isinstance(m, nn.Linear)]
    assert all(m.bias is None for m in linears)
    in_layers = {id(m) for m in model.cores.modules()}
    downs = {id(m.down) for m in model.mlps}
    assert sum(id(m) in in_layers for m in linears) == 2 * 5        # q, k, v, beta, out in each layer
    for m in linears:
        if id(m) in in_layers:
            want = 2 ** -2.5 * (2 / (m.in_features + m.out_features)) ** 0.5
        else:
            want = 0.02 / 2 if id(m) in downs else 0.02
        assert abs(m.weight.std().item() - want) < 0.15 * want, (m, m.weight.std().item())
    assert abs(model.embed.weight.std().item() - 0.02) < 0.01
    conv_spec = str(Path(__file__).parents[1] / "benchmarks" / "specs" / "deltanet_negeig_conv.rec")
    convs = [m for m in TaskModel(dataclasses.replace(cfg, spec=conv_spec), vocab=10).modules()
             if isinstance(m, nn.Conv1d)]
    assert len(convs) == 6 and all(0.4 < c.weight.abs().max().item() <= 0.5 for c in convs)   # U(-1/2, 1/2)
    x = torch.randn(2, 7, 16)
    m = SwiGLU(16)
    gate, up = m.gate_up(x).chunk(2, dim=-1)
    assert torch.allclose(m(x), m.down(torch.nn.functional.silu(gate) * up))
    train(cfg, str(tmp_path / "fla"), log=io.StringIO())
    loaded, loaded_cfg = load_checkpoint(str(tmp_path / "fla" / "checkpoint.pt"), device="cpu")
    assert loaded_cfg.block == "fla" and isinstance(loaded.mlps[0], SwiGLU)
    with pytest.raises(ValueError, match="block must be one of"):
        TaskModel(dataclasses.replace(cfg, block="gpt"), vocab=10)
