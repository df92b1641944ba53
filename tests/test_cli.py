"""CLI smoke runs: every verb's --help, and train -> eval -> show on a small subset."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

from conftest import assert_one_line_error, run_cli
from lenet.cli import VERBS
from lenet.errors import LenetError


@pytest.mark.parametrize("verb", VERBS)
def test_help(verb):
    p = run_cli(verb, "--help")
    assert p.returncode == 0 and f"usage: lenet {verb}" in p.stdout


# Start-up: `lenet --help`, `--version`, a mistyped verb and `import lenet` answer without torch.
NO_TORCH = "import sys; {}; assert 'torch' not in sys.modules, sorted(sys.modules)"


@pytest.mark.parametrize("argv", [["--help"], ["--version"], ["no-such-verb"], []])
def test_top_level_does_not_import_torch(argv):
    call = f"from lenet.cli import main\ntry: main({argv!r})\nexcept SystemExit: pass"
    p = subprocess.run(
        [sys.executable, "-c", NO_TORCH.format(call)], capture_output=True, text=True
    )
    assert p.returncode == 0, p.stderr
    assert "lenet" in p.stdout + p.stderr  # it did answer (help, version or the error line)


def test_import_lenet_does_not_import_torch():
    code = NO_TORCH.format("import lenet; lenet.__version__; from lenet import config, errors")
    p = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert p.returncode == 0, p.stderr


def test_submodules_are_attributes_of_a_bare_import_lenet():
    # `import lenet; lenet.data.load_split(...)` worked with the old eager __init__: still lazy.
    code = (
        "import sys, lenet\n"
        "assert 'torch' not in sys.modules\n"
        "assert callable(lenet.data.load_split) and callable(lenet.models.create_model)\n"
        "assert lenet.engine.train is lenet.train\n"
        "try:\n    lenet.no_such_thing\nexcept AttributeError:\n    print('ok')"
    )
    p = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert p.returncode == 0 and p.stdout.strip() == "ok", p.stderr


def test_top_level_help_lists_every_verb_with_its_line():
    p = run_cli("--help")
    assert p.returncode == 0, p.stderr
    text = " ".join(p.stdout.split())  # argparse wraps long help lines
    for verb, line in VERBS.items():
        assert f"{verb} {line}" in text


def test_verb_help_line_comes_from_the_table():
    """With the verb modules loaded (`lenet -h VERB`), each help line is still the table's."""
    from lenet.cli import build_parser

    action = build_parser()._subparsers._group_actions[0]  # every verb module loaded
    assert {a.dest: a.help for a in action._choices_actions} == VERBS


def test_usage_mistakes_are_one_line():
    assert_one_line_error(run_cli("no-such-verb"), "invalid choice: 'no-such-verb'")
    assert_one_line_error(run_cli(), "required: COMMAND", "'lenet --help'")
    assert_one_line_error(run_cli("train", "--epochs", "x"), "--epochs", "'lenet train --help'")


def test_train_eval_show_smoke(mnist_dir, tmp_path):
    p = run_cli(
        "train",
        "--limit",
        "2000",
        "--epochs",
        "1",
        "--val-size",
        "1000",
        "--threads",
        "1",
        "--data-dir",
        str(mnist_dir),
        "--out",
        str(tmp_path),
        "--name",
        "smoke",
    )
    assert p.returncode == 0, p.stderr
    assert "epoch   1/1" in p.stdout and "img/s" in p.stdout
    run = tmp_path / "smoke"
    for f in ("config.json", "metrics.csv", "best.pt", "last.pt", "curves.png"):
        assert (run / f).is_file()

    p = run_cli("eval", str(run / "best.pt"), "--json", "--data-dir", str(mnist_dir))
    assert p.returncode == 0, p.stderr
    r = json.loads(p.stdout)
    assert r["n"] == 10_000 and 0.5 < r["accuracy"] <= 1.0
    assert len(r["per_class"]) == 10 and sum(map(sum, r["confusion"])) == 10_000
    assert (run / "confusion.png").is_file() and (run / "errors.png").is_file()

    p = run_cli("show", str(run / "best.pt"), "--n", "20", "--data-dir", str(mnist_dir))
    assert p.returncode == 0, p.stderr
    lines = [ln for ln in p.stdout.splitlines() if ln.startswith("predicted:")]
    assert len(lines) == 20 and lines[0].endswith('actual: "7"')
    assert (run / "show.png").is_file()


def test_missing_checkpoint_is_one_line(tmp_path):
    assert_one_line_error(run_cli("eval", str(tmp_path / "nope.pt")), "no such checkpoint")


def test_bad_flag_value_is_one_line(tmp_path):
    p = run_cli("train", "--epochs", "0", "--out", str(tmp_path))
    assert_one_line_error(p, "--epochs must be at least 1")


def test_resume_refuses_to_change_settings(mnist_dir, tmp_path):
    p = run_cli(
        "train",
        "--limit",
        "500",
        "--epochs",
        "1",
        "--val-size",
        "100",
        "--threads",
        "1",
        "--data-dir",
        str(mnist_dir),
        "--out",
        str(tmp_path),
        "--name",
        "r",
    )
    assert p.returncode == 0, p.stderr
    last = tmp_path / "r" / "last.pt"
    p = run_cli("train", "--resume", str(last), "--lr", "0.1", "--augment", "both")
    line = assert_one_line_error(p, "cannot change --lr, --augment")
    # The API refuses through the same rule, with the same words (and before loading weights).
    from lenet import train

    with pytest.raises(LenetError) as api:
        train(resume=last, lr=0.1, augment="both", progress=False)
    assert line == f"lenet: error: {api.value}"
    p = run_cli("train", "--resume", str(last), "--model", "lenet1")
    line = assert_one_line_error(p, "cannot change --model")
    with pytest.raises(LenetError) as api:
        train(resume=last, model="lenet1", progress=False)
    assert line == f"lenet: error: {api.value}"


def test_train_flags_are_the_config_fields():
    from lenet.cli import build_parser
    from lenet.config import TrainConfig, flag_fields

    train = build_parser()._subparsers._group_actions[0].choices["train"]
    dests = {a.dest: a for a in train._actions}
    for f in flag_fields():
        assert f.name in dests and f.metadata["help"] in dests[f.name].help, f.name
        assert dests[f.name].default is None  # not given: the recipe decides
    assert {f.name for f in flag_fields()} == set(TrainConfig.__dataclass_fields__) - {"recipe"}
    assert list(dests["dataset"].choices) == ["mnist", "fashion-mnist"]


def test_recipe_help_names_every_recipe():
    """--recipe's help is made from config.RECIPES, so a new recipe cannot be left out of it."""
    from lenet.cli import build_parser
    from lenet.config import RECIPES

    train = build_parser()._subparsers._group_actions[0].choices["train"]
    recipe = next(a for a in train._actions if a.dest == "recipe")
    for name in RECIPES:
        assert f"{name} " in recipe.help, name
    assert "fashion = lenet5-relu, fashion-mnist" in recipe.help


def test_train_flags_do_not_import_torch():
    """The model names need torch: they are listed when help is shown, not when flags are made."""
    import subprocess
    import sys

    code = (
        "import argparse, sys; from lenet.cli import train; "
        "train.register(argparse.ArgumentParser().add_subparsers()); print('torch' in sys.modules)"
    )
    p = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert p.stdout.strip() == "False", p.stdout + p.stderr


def test_seed_recipe_still_works_with_a_deprecation_line(tmp_path):
    p = run_cli("train", "--recipe", "seed", "--epochs", "0", "--out", str(tmp_path))
    assert_one_line_error(p, "--epochs must be at least 1")
    assert "recipe 'seed' is now called 'note'" in p.stderr


def test_out_of_range_start_and_unwritable_out_are_one_line(mnist_dir, tmp_path):
    from lenet.predictor import bundled_checkpoint

    bundled = str(bundled_checkpoint())
    p = run_cli("show", bundled, "--start", "10000", "--data-dir", str(mnist_dir))
    assert_one_line_error(p, "--start must be between 0 and 9999")
    a_file = tmp_path / "not-a-folder"
    a_file.write_text("x")
    p = run_cli("eval", bundled, "--out", str(a_file), "--data-dir", str(mnist_dir))
    assert_one_line_error(p, "not-a-folder")


def test_bundled_weights_pictures_go_to_the_current_folder(mnist_dir, tmp_path):
    from lenet.predictor import bundled_checkpoint

    p = run_cli(
        "show", str(bundled_checkpoint()), "--n", "3", "--data-dir", str(mnist_dir), cwd=tmp_path
    )
    assert p.returncode == 0, p.stderr
    assert (tmp_path / "show.png").is_file()
    assert not (bundled_checkpoint().parent / "show.png").exists()
