"""The LeNet family: exact parameter/connection counts against the 1998 paper and the study note,
the C3 table, forward shapes, distortions, the learner views and the reproduce smoke run."""

from __future__ import annotations

import json

import pytest
import torch
import torch.nn.functional as F

from conftest import assert_one_line_error, run_cli
from lenet.augment import distort, make_augmenter
from lenet.models import count_parameters, create_model, get_spec, list_models
from lenet.models.layers import PAPER_1998, PartialConv2d, ScaledTanh, Subsample
from lenet.models.lenet5_1998 import C3_TABLE, digit_prototypes
from lenet.normalization import normalize
from lenet.summary import summarize

FAMILY = ["lenet1", "lenet4", "lenet5", "lenet5-relu", "lenet5-1998", "lenet5-plus"]


def rows(name):
    s = summarize(create_model(name), name)
    return s, {r.name: r for r in s.layers}


# ---------------------------------------------------------------- counts vs paper and note


def test_lenet5_1998_matches_the_paper_exactly():
    s, r = rows("lenet5-1998")
    assert s.total_params == 60_000 and s.total_connections == 340_908
    expected = {  # layer: (output shape, parameters, connections) from section II-B
        "c1": ([6, 28, 28], 156, 122_304),
        "s2": ([6, 14, 14], 12, 5_880),
        "c3": ([16, 10, 10], 1_516, 151_600),
        "s4": ([16, 5, 5], 32, 2_000),
        "c5": ([120, 1, 1], 48_120, 48_120),
        "f6": ([84], 10_164, 10_164),
        "output": ([10], 0, 840),
    }
    for name, (shape, params, conns) in expected.items():
        assert (r[name].output_shape, r[name].params, r[name].connections) == (
            shape,
            params,
            conns,
        ), name
    assert r["pad"].output_shape == [1, 32, 32]


def test_lenet5_summary_agrees_with_the_study_note():
    s, r = rows("lenet5")
    assert r["c1"].params == (5 * 5 + 1) * 6 == 156
    assert r["c1"].output_shape == [6, 28, 28]
    assert r["s2"].output_shape == [6, 14, 14]
    assert r["c3"].output_shape == [16, 10, 10]
    assert r["s4"].output_shape == [16, 5, 5]
    assert r["c5"].output_shape == [120, 1, 1]
    assert r["f6"].output_shape == [84] and r["output"].output_shape == [10]
    assert s.total_params == 61_706
    assert r["c1"].connections == 28 * 28 * 156  # same as the paper's C1: padding counts


def test_lenet1_matches_the_1990_papers_totals():
    s, r = rows("lenet1")
    # LeCun et al. 1990: "98,442 connections, 2,578 independent parameters"
    assert (s.total_params, s.total_connections) == (2_578, 98_442)
    assert [r[k].output_shape for k in ("h1", "h2", "h3", "h4")] == [
        [4, 24, 24],
        [4, 12, 12],
        [12, 8, 8],
        [12, 4, 4],
    ]


def test_lenet4_counts_near_the_papers():
    s, r = rows("lenet4")
    assert (s.total_params, s.total_connections) == (15_090, 262_386)
    assert abs(s.total_params - 17_000) / 17_000 < 0.15  # "about 17,000"
    assert abs(s.total_connections - 260_000) / 260_000 < 0.02  # "about 260,000"
    assert r["pad"].output_shape == [1, 32, 32] and r["f5"].output_shape == [120, 1, 1]


def test_lenet5_plus_within_budget():
    assert count_parameters(create_model("lenet5-plus")) == 55_630 <= 62_000


def test_summary_params_equal_count_parameters_for_every_model():
    for name in list_models():
        s = summarize(create_model(name), name)
        assert (
            sum(r.params for r in s.layers)
            == s.total_params
            == count_parameters(create_model(name))
        )


# ---------------------------------------------------------------- layers


def test_c3_connection_table_is_table_one():
    sizes = [len(r) for r in C3_TABLE]
    assert sizes == [3] * 6 + [4] * 6 + [4] * 3 + [6]
    assert C3_TABLE[0] == (0, 1, 2) and C3_TABLE[5] == (5, 0, 1)  # contiguous, wrapping
    assert C3_TABLE[6] == (0, 1, 2, 3) and C3_TABLE[11] == (5, 0, 1, 2)
    assert C3_TABLE[12:15] == [(0, 1, 3, 4), (1, 2, 4, 5), (0, 2, 3, 5)]  # non-contiguous
    assert sum(sizes) * 25 + 16 == 1_516
    c3 = create_model("lenet5-1998").c3
    w = c3.full_weight()
    seen = (w.abs().sum((2, 3)) > 0).int()
    for o, row in enumerate(C3_TABLE):
        assert seen[o].nonzero().flatten().tolist() == sorted(row)


def test_partial_conv_equals_masked_dense_conv():
    torch.manual_seed(0)
    pc = PartialConv2d(6, C3_TABLE, 5)
    torch.nn.init.normal_(pc.weight)
    x = torch.randn(2, 6, 14, 14)
    mask = torch.zeros(16, 6, 1, 1)
    for o, row in enumerate(C3_TABLE):
        mask[o, list(row)] = 1
    dense = pc.full_weight().detach()
    torch.testing.assert_close(pc(x), F.conv2d(x, dense * mask, pc.bias))
    pc(x).sum().backward()
    assert pc.weight.grad.shape == (60, 5, 5) and pc.weight.grad.abs().sum() > 0


def test_subsample_and_scaled_tanh_follow_the_paper():
    s = Subsample(2)
    with torch.no_grad():
        s.weight.copy_(torch.tensor([2.0, -1.0]))
        s.bias.copy_(torch.tensor([0.5, 0.0]))
    x = torch.arange(32.0).view(1, 2, 4, 4)
    ref = F.avg_pool2d(x, 2) * 4 * torch.tensor([2.0, -1.0]).view(1, 2, 1, 1)
    torch.testing.assert_close(s(x), ref + torch.tensor([0.5, 0.0]).view(1, 2, 1, 1))
    f = ScaledTanh()
    torch.testing.assert_close(
        f(torch.tensor([1.0, -1.0])), torch.tensor([1.0, -1.0]), atol=1e-3, rtol=0
    )


def test_paper_input_scaling():
    x = normalize(
        torch.tensor([[0, 255]], dtype=torch.uint8).expand(28, 2).contiguous(), PAPER_1998
    )
    assert x.min().item() == pytest.approx(-0.1) and x.max().item() == pytest.approx(1.175)
    assert get_spec("lenet5-1998").normalization == PAPER_1998


def test_rbf_prototypes_are_distinct_plus_minus_one_bitmaps():
    p = digit_prototypes()
    assert p.shape == (10, 84) and set(p.unique().tolist()) == {-1.0, 1.0}
    d = torch.cdist(p, p)
    assert (d + torch.eye(10) * 1e9).min() > 0  # no two digits share a prototype
    m = create_model("lenet5-1998")
    assert "output.prototypes" in m.state_dict()
    assert all("prototypes" not in n for n, _ in m.named_parameters())


def test_padding_uses_background_under_any_normalization():
    m = create_model("lenet4")
    x = normalize(torch.zeros(1, 28, 28, dtype=torch.uint8), PAPER_1998)
    assert torch.allclose(m.pad(x), torch.full((1, 1, 32, 32), -0.1))


@pytest.mark.parametrize("name", FAMILY)
def test_forward_shapes_and_training_step(name):
    torch.manual_seed(0)
    m = create_model(name)
    x = torch.randn(4, 1, 28, 28)
    out = m(x)
    assert out.shape == (4, 10) and torch.isfinite(out).all()
    loss = F.cross_entropy(out, torch.arange(4))
    loss.backward()
    assert all(p.grad is not None for p in m.parameters())


# ---------------------------------------------------------------- distortions


def _batch():
    g = torch.Generator().manual_seed(0)
    imgs = torch.zeros(8, 28, 28, dtype=torch.uint8)
    imgs[:, 8:20, 12:16] = 255  # a bar in the middle, background elsewhere
    imgs[:, 8:12, 8:20] = (torch.rand(8, 4, 12, generator=g) * 255).to(torch.uint8)
    return normalize(imgs, PAPER_1998)


@pytest.mark.parametrize("kind", ["affine", "elastic", "both"])
def test_augment_is_deterministic_under_seed_and_changes_images(kind):
    x = _batch()
    a = make_augmenter(kind, seed=3, epoch=2)(x)
    b = make_augmenter(kind, seed=3, epoch=2)(x)
    c = make_augmenter(kind, seed=3, epoch=3)(x)
    assert a.shape == x.shape and a.dtype == x.dtype
    torch.testing.assert_close(a, b)
    assert not torch.allclose(a, c) and not torch.allclose(a, x)
    # intensities stay within the input's range (bilinear sampling only mixes pixels)...
    assert a.min() >= x.min() - 1e-5 and a.max() <= x.max() + 1e-5
    # ...the background stays background, and the digit keeps roughly its amount of ink
    assert (a[:, :, 0, :] - x.min()).abs().max() < 1e-4
    ink = lambda t: (t - x.min()).sum((1, 2, 3))  # noqa: E731
    ratio = ink(a) / ink(x)
    assert ((ratio > 0.5) & (ratio < 2.0)).all(), ratio  # scale +-12% and elastic


def test_augment_none_is_identity_and_global_rng_untouched():
    assert make_augmenter("none", 0, 0) is None
    x = _batch()
    state = torch.get_rng_state()
    make_augmenter("both", 0, 0)(x)
    assert torch.equal(state, torch.get_rng_state())
    assert distort(x, "none", torch.Generator()) is x


def test_train_with_augment_is_reproducible_and_resumes_exactly(mnist_dir, tmp_path):
    from lenet.engine import train

    common = dict(
        model="lenet5-1998",
        augment="both",
        limit=512,
        batch_size=128,
        val_size=500,
        threads=1,
        data_dir=str(mnist_dir),
        out=str(tmp_path),
        progress=False,
    )
    a = train(name="a", epochs=2, **common)
    b = train(name="b", epochs=2, **common)

    def kill_after_1(row, res):
        if row.epoch == 1:
            raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        train(name="c", epochs=2, on_epoch=kill_after_1, **common)
    c = train(resume=tmp_path / "c" / "last.pt", progress=False)
    sd = [torch.load(r.last_path, weights_only=True)["state_dict"] for r in (a, b, c)]
    for k in sd[0]:
        torch.testing.assert_close(sd[0][k], sd[1][k], rtol=0, atol=0)
        torch.testing.assert_close(sd[0][k], sd[2][k], rtol=0, atol=0)
    assert json.loads((tmp_path / "a" / "config.json").read_text())["augment"] == "both"


# ---------------------------------------------------------------- CLI


def test_summary_cli_text_and_json():
    p = run_cli("summary", "lenet5-1998")
    assert p.returncode == 0, p.stderr
    assert "60,000" in p.stdout and "340,908" in p.stdout and "16x10x10" in p.stdout
    p = run_cli("summary", "lenet5", "--json")
    d = json.loads(p.stdout)
    assert d["total_params"] == 61_706 and d["layers"][0]["name"] == "c1"
    assert d["layers"][0]["params"] == 156 and d["layers"][0]["output_shape"] == [6, 28, 28]
    assert_one_line_error(run_cli("summary", "lenet9"), "neither a model")


def test_train_augment_flag_reaches_the_run_and_bad_value_is_refused(mnist_dir, tmp_path):
    p = run_cli("train", "--augment", "wobble", "--out", str(tmp_path))
    assert_one_line_error(p, "--augment must be none, both, or one or more of affine")
    flags = "--augment affine --limit 256 --epochs 1 --val-size 100 --threads 1".split()
    p = run_cli(
        "train", *flags, "--data-dir", str(mnist_dir), "--out", str(tmp_path), "--name", "a"
    )
    assert p.returncode == 0, p.stderr
    assert json.loads((tmp_path / "a" / "config.json").read_text())["augment"] == "affine"


@pytest.mark.slow
def test_views_and_summary_of_a_checkpoint(mnist_dir, tmp_path):
    flags = "--model lenet5-1998 --augment affine --limit 1000 --batch-size 64 --epochs 1".split()
    flags += "--val-size 500 --threads 1".split()
    p = run_cli(
        "train", *flags, "--data-dir", str(mnist_dir), "--out", str(tmp_path), "--name", "r"
    )
    assert p.returncode == 0, p.stderr
    ckpt = tmp_path / "r" / "best.pt"
    p = run_cli("viz", str(ckpt), "test:0", "--json", "--data-dir", str(mnist_dir))
    assert p.returncode == 0, p.stderr
    v = json.loads(p.stdout)
    assert v["layers"] == ["pad", "c1", "s2", "c3", "s4", "c5", "f6"]
    assert len(v["probabilities"]) == 10 and abs(sum(v["probabilities"]) - 1) < 1e-4
    assert (tmp_path / "r" / "viz.png").stat().st_size > 10_000
    p = run_cli("filters", str(ckpt))
    assert p.returncode == 0 and (tmp_path / "r" / "filters.png").is_file()
    p = run_cli("summary", str(ckpt), "--json")
    assert json.loads(p.stdout)["total_connections"] == 340_908
    assert_one_line_error(
        run_cli("viz", str(ckpt), "test:99999", "--data-dir", str(mnist_dir)), "out of range"
    )
    assert_one_line_error(run_cli("viz", str(ckpt), str(tmp_path / "nope.png")), "no such image")
    flags = "--n 3 --copies 2".split()
    p = run_cli(
        "augment-preview", *flags, "--out", str(tmp_path / "a.png"), "--data-dir", str(mnist_dir)
    )
    assert p.returncode == 0 and (tmp_path / "a.png").is_file()


@pytest.mark.slow
def test_reproduce_quick_smoke(mnist_dir, tmp_path):
    where = ["--data-dir", str(mnist_dir), "--out", str(tmp_path / "docs")]
    p = run_cli("reproduce", "--quick", "--threads", "1", *where, "--runs", str(tmp_path / "runs"))
    assert p.returncode == 0, p.stderr
    rep = json.loads((tmp_path / "docs" / "reproduction-quick.json").read_text())
    assert rep["command"] == "lenet reproduce --quick --threads 1"  # how it ran, in its header
    assert [r["key"] for r in rep["rows"]] == [
        "lenet1",
        "lenet4",
        "lenet5-seed",
        "lenet5-relu",
        "lenet5-1998",
        "lenet5-1998-adamw",
        "lenet5-1998+distortions",
        "lenet5-plus+distortions",
    ]
    # the published network's target row is the paper's own training
    sdlm = next(r for r in rep["rows"] if r["key"] == "lenet5-1998")["config"]
    assert (sdlm["optimizer"], sdlm["scheduler"], sdlm["batch_size"]) == ("sdlm", "paper", 8)
    for r in rep["rows"]:
        assert (
            len(r["runs"]) == 1 and 0 <= r["mean_error"] < 90
        )  # 1 short epoch: better than chance
        assert r["config"]["val_size"] == 0 and r["config"]["select_on"] == "last"
    md = (tmp_path / "docs" / "reproduction-quick.md").read_text()
    assert "| `lenet5-1998` |" in md and "0.95%" in md
    assert not (tmp_path / "docs" / "reproduction.md").exists()  # quick never overwrites


def test_reproduce_update_replaces_only_the_rerun_rows(mnist_dir, tmp_path):
    from lenet.reproduce import reproduce

    kw = dict(
        quick=True, out_dir=tmp_path, runs_dir=tmp_path / "runs", data_dir=str(mnist_dir), threads=1
    )
    first = reproduce(rows=["lenet1", "lenet4"], **kw)
    again = reproduce(rows=["lenet4"], update=True, **kw)
    assert [r["key"] for r in again["rows"]] == ["lenet1", "lenet4"]
    assert again["rows"][0] == first["rows"][0]  # lenet1 kept as it was
    assert again["updates"][0]["rows"] == ["lenet4"]
    assert "re-run by" in (tmp_path / "reproduction-quick.md").read_text()


def test_reproduce_report_names_the_update_each_row_comes_from():
    from lenet.reproduce import _update_lines

    ups = [
        dict(command="lenet reproduce --only a,b --update", started="t1", rows=["a", "b"]),
        dict(command="lenet reproduce --only b --update", started="t2", rows=["b"]),
        dict(command="lenet reproduce --only c --update", started="t3", rows=["c"]),
    ]
    for u in ups:
        u["total_seconds"] = 60.0
    first, second, third = _update_lines(ups)
    assert "its runs of `a`" in first and "re-run again later" in first
    assert second.endswith("the table shows those runs.\n") and "t2" in second
    assert third.endswith("the table shows those runs.\n")


def test_reproduce_targets_are_the_issues_and_comparison_rows_are_marked():
    from lenet.reproduce import ROWS, _targets_met, render_markdown

    targets = {r.key: r.paper_error for r in ROWS if r.target}
    assert targets == {
        "lenet1": 1.7,
        "lenet4": 1.1,
        "lenet5-relu": 0.95,
        "lenet5-1998": 0.95,
        "lenet5-1998+distortions": 0.8,
        "lenet5-plus+distortions": 0.4,
    }
    row = dict(model="m", what="w", paper_row="p", std_error=None, params=1,
               config=dict(epochs=1, recipe="fast", batch_size=1, optimizer="adamw", lr=1.0,
                           scheduler="none", weight_decay=0.0, augment="none"),
               train_seconds_mean=1.0)  # fmt: skip
    rep = dict(quick=False, command="lenet reproduce --seeds 1", started="t", total_seconds=1.0,
               protocol="p", paper="P", machine=dict(processor="x", cpu_count=2, torch_threads=1,
                                                     torch="2"),
               rows=[dict(row, key="a", paper_error=1.0, mean_error=0.9, beats_paper=True,
                          runs=[dict(test_error=0.9)], target=True),
                     dict(row, key="b", paper_error=1.0, mean_error=3.0, beats_paper=False,
                          runs=[dict(test_error=3.0)], target=False)])  # fmt: skip
    assert _targets_met(rep)  # a comparison row above the paper does not count
    md = render_markdown(rep)
    assert "at or below its target: **yes**" in md and "(comparison: no)" in md
    rep["rows"][0].update(mean_error=1.2, beats_paper=False)
    assert not _targets_met(rep) and "**no**" in render_markdown(rep)


def test_recorded_reproduction_is_one_command_with_every_target_met():
    """docs/reproduction.md is what one full `lenet reproduce` wrote, and it meets the targets."""
    from pathlib import Path

    from lenet.reproduce import ROWS, _targets_met, render_markdown

    docs = Path(__file__).resolve().parents[1] / "docs"
    rep = json.loads((docs / "reproduction.json").read_text())
    assert not rep.get("updates") and rep["command"].startswith("lenet reproduce --seeds 3")
    assert [r["key"] for r in rep["rows"]] == [r.key for r in ROWS]
    for recorded, row in zip(rep["rows"], ROWS, strict=True):
        assert (recorded["paper_error"], recorded["target"]) == (row.paper_error, row.target)
        assert len(recorded["runs"]) == 3
    assert rep["targets_met"] and _targets_met(rep)
    assert (docs / "reproduction.md").read_text() == render_markdown(rep)
