"""Real-data accuracy gate (tinygrad-style): the default recipe must reach 99.0% on MNIST test."""

from __future__ import annotations

import pytest

from lenet.engine import train
from lenet.evaluation import evaluate


@pytest.mark.slow
def test_fast_recipe_reaches_99_percent(mnist_dir, tmp_path):
    res = train(data_dir=str(mnist_dir), out=str(tmp_path), name="gate", progress=False)
    assert res.select_on == "val"  # the test set is touched only by evaluate()
    report = evaluate(res.best_path, data_dir=mnist_dir, plots=False)
    print(f"fast recipe: test accuracy {report.accuracy:.4f}")
    assert report.accuracy >= 0.990
