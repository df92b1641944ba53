"""Data-parallel training on CPU (gloo): 2 processes match 1, rank 0 alone writes, DDP checkpoints
load anywhere, a dead or hung rank stops the others with one clear line, and runs resume."""

from __future__ import annotations

import csv
import json
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from conftest import run_cli
from lenet.checkpoint import read_checkpoint
from lenet.distributed import (
    DDPStrategy,
    DistContext,
    SingleProcess,
    check_global_batch,
    setup,
)
from lenet.errors import LenetError

# A small subset; 1001 images with batch 96 leave a last batch of 41 that splits 21/20 unevenly.
SUBSET = [
    "--limit",
    "1001",
    "--val-size",
    "1000",
    "--batch-size",
    "96",
    "--device",
    "cpu",
    "--threads",
    "1",
]


def _env(**extra: str) -> dict:
    # One thread per rank: 2 ranks on the 2 cores this suite is sized for.
    return {**os.environ, "PYTHONUNBUFFERED": "1", "OMP_NUM_THREADS": "1", **extra}


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _popen(cmd: list[str], cwd: Path, env: dict) -> subprocess.Popen:
    # Own session, so a whole process tree (torchrun + workers) can be killed at once.
    return subprocess.Popen(
        cmd,
        cwd=cwd,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        start_new_session=True,
    )


def _finish(p: subprocess.Popen, timeout: float) -> tuple[int, str, str]:
    """Wait for ``p``; on timeout kill its whole session and fail (never leave processes)."""
    try:
        out, err = p.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        _kill(p)
        out, err = p.communicate()
        pytest.fail(f"did not finish within {timeout} s:\n{out}\n{err}")
    return p.returncode, out, err


def _kill(p: subprocess.Popen) -> None:
    try:
        os.killpg(p.pid, signal.SIGKILL)
    except ProcessLookupError:
        pass


def _lenet_train(*args: str) -> list[str]:
    return [sys.executable, "-m", "lenet", "train", *args]


def _launch_ranks(
    args: list[str], cwds: list[Path], timeout_s: float = 60
) -> list[subprocess.Popen]:
    """Start one ``lenet train`` per rank by hand, with the variables torchrun would set; each rank
    in its own folder, like separate machines (relative --out paths then show who writes)."""
    port, world = _free_port(), len(cwds)
    procs = []
    for rank, cwd in enumerate(cwds):
        cwd.mkdir(parents=True, exist_ok=True)
        env = _env(
            MASTER_ADDR="127.0.0.1",
            MASTER_PORT=str(port),
            WORLD_SIZE=str(world),
            RANK=str(rank),
            LOCAL_RANK=str(rank),
            LOCAL_WORLD_SIZE=str(world),
            LENET_DIST_TIMEOUT=str(timeout_s),
        )
        procs.append(_popen(_lenet_train(*args), cwd, env))
    return procs


def _torchrun(nproc: int, args: list[str], cwd: Path, *extra: str, **env: str) -> subprocess.Popen:
    cmd = [
        sys.executable,
        "-m",
        "torch.distributed.run",
        "--standalone",
        f"--nproc-per-node={nproc}",
        *extra,
        "-m",
        "lenet",
        "train",
        *args,
    ]
    return _popen(cmd, cwd, _env(**env))


def _metrics(run_dir: Path) -> list[dict]:
    with open(run_dir / "metrics.csv") as f:
        return list(csv.DictReader(f))


def _max_weight_diff(a: Path, b: Path) -> float:
    sa, sb = read_checkpoint(a)["state_dict"], read_checkpoint(b)["state_dict"]
    assert sa.keys() == sb.keys()
    return max((sa[k] - sb[k]).abs().max().item() for k in sa)


# ---------------------------------------------------------------------------- unit level


def test_shards_are_disjoint_and_cover_the_global_batch():
    batch = torch.arange(41)
    parts = [DDPStrategy(DistContext(rank=r, world_size=3)).shard(batch) for r in range(3)]
    assert torch.equal(torch.cat(parts), batch)
    assert [len(p) for p in parts] == [14, 14, 13]
    assert SingleProcess().shard(batch) is batch


def test_scaled_shard_losses_average_to_the_global_mean():
    # DDP averages per-rank gradients; the per-rank loss is scaled so the average is exact.
    torch.manual_seed(0)
    logits, labels = torch.randn(41, 10), torch.randint(0, 10, (41,))
    full = torch.nn.functional.cross_entropy(logits, labels)
    ranks = [DDPStrategy(DistContext(rank=r, world_size=2)) for r in range(2)]
    parts = [s.batch_loss(s.shard(logits), s.shard(labels), 41) for s in ranks]
    assert torch.allclose(sum(parts) / 2, full, rtol=1e-6)


def test_one_strategy_object_with_the_same_methods_either_way():
    public = {n for n in dir(SingleProcess) if not n.startswith("_")}
    assert public <= {n for n in dir(DDPStrategy) if not n.startswith("_")}
    single = setup(torch.device("cpu"))  # no torchrun variables: a world of one
    assert type(single) is SingleProcess and single.is_main and single.world_size == 1
    rows = torch.arange(5)
    assert single.shard(rows) is rows and single.from_main(lambda: 7) == 7
    assert single.sum_values(torch.tensor(2.0), 3) == (2.0, 3.0)
    logits, labels = torch.tensor([[2.0, 0.0], [0.0, 1.0]]), torch.tensor([0, 0])
    from lenet.runtime import loss_and_accuracy

    assert single.loss_and_accuracy(logits, labels) == loss_and_accuracy(logits, labels)
    with single.failures_as_errors("last.pt"):
        pass
    ddp = DDPStrategy(DistContext(rank=1, world_size=2))
    assert torch.equal(ddp.shard(torch.arange(5)), torch.tensor([3, 4]))


def test_global_batch_must_divide_over_ranks():
    assert check_global_batch(256, DistContext(world_size=4)) == 64
    with pytest.raises(LenetError, match="--batch-size 250 .* 4 processes .* 248 or 252"):
        check_global_batch(250, DistContext(world_size=4))


def test_nproc_rejects_an_uneven_batch_before_starting(tmp_path):
    proc = run_cli("train", "--nproc", "2", "--batch-size", "97", "--data-dir", str(tmp_path))
    assert proc.returncode == 2
    assert proc.stderr.strip() == (
        "lenet: error: --batch-size 97 is the global batch and must divide evenly over "
        "2 processes (try 96 or 98)"
    )


# ---------------------------------------------------------------------------- 2 ranks vs 1


@pytest.mark.slow  # several processes, several epochs
def test_two_processes_match_one_and_only_rank0_writes(mnist_dir, tmp_path):
    args = [*SUBSET, "--epochs", "3", "--data-dir", str(mnist_dir), "--out", "runs", "--name", "r"]
    one = _popen(_lenet_train(*args), tmp_path, _env())
    rc, out1, err1 = _finish(one, 300)
    assert rc == 0, err1

    ranks = _launch_ranks(args, [tmp_path / "rank0", tmp_path / "rank1"])
    results = [_finish(p, 300) for p in ranks]
    assert [r[0] for r in results] == [0, 0], results
    (_, out0, err0), (_, out_1, err_1) = results

    # Only rank 0 prints and writes: rank 1 (in its own folder) created nothing at all.
    assert out_1 == "" and "lenet: training" not in err_1, (out_1, err_1)
    assert not (tmp_path / "rank1" / "runs").exists()
    assert out0.count("epoch   1/3") == 1
    run2 = tmp_path / "rank0" / "runs" / "r"
    files = {p.name for p in run2.iterdir()}
    assert files == {"config.json", "metrics.csv", "best.pt", "last.pt", "curves.png"}

    # Same global batch and seed: the same loss curve, up to float summation order.
    m1, m2 = _metrics(tmp_path / "runs" / "r"), _metrics(run2)
    assert len(m1) == len(m2) == 3
    for a, b in zip(m1, m2, strict=True):
        for key in ("train_loss", "val_loss"):
            assert float(a[key]) == pytest.approx(float(b[key]), rel=1e-4), (key, a, b)
        for key in ("train_acc", "val_acc"):
            assert float(a[key]) == pytest.approx(float(b[key]), abs=2e-3), (key, a, b)
        assert a["lr"] == b["lr"]  # the same number of scheduler steps
    assert _max_weight_diff(tmp_path / "runs" / "r" / "last.pt", run2 / "last.pt") < 1e-4


@pytest.mark.slow  # several processes, several epochs
def test_nproc_checkpoint_loads_in_one_process_and_back(mnist_dir, tmp_path):
    # --scheduler none: a one-cycle schedule is fixed at its first epoch count (resuming with
    # more epochs is not what this test is about).
    common = [*SUBSET, "--scheduler", "none"]
    proc = run_cli(
        "train",
        "--nproc",
        "2",
        *common,
        "--epochs",
        "1",
        "--data-dir",
        str(mnist_dir),
        "--out",
        str(tmp_path),
        "--name",
        "n",
        "--json",
        cwd=tmp_path,
        timeout=300,
    )
    assert proc.returncode == 0, proc.stderr
    assert len(proc.stdout.strip().splitlines()) == 1  # rank 0 alone prints
    summary = json.loads(proc.stdout)
    best = Path(summary["best"])
    ck = read_checkpoint(best)
    assert not any(k.startswith("module.") for k in ck["state_dict"])
    ev = run_cli("eval", str(best), "--data-dir", str(mnist_dir), "--json", "--no-plots")
    assert ev.returncode == 0, ev.stderr
    assert 0.5 < json.loads(ev.stdout)["accuracy"] <= 1.0

    # A single process continues the DDP run from its last.pt, and 2 processes continue that.
    last = str(best.parent / "last.pt")
    more = run_cli("train", "--resume", last, "--epochs", "2", cwd=tmp_path, timeout=300)
    assert more.returncode == 0, more.stderr
    again = run_cli(
        "train", "--nproc", "2", "--resume", last, "--epochs", "3", cwd=tmp_path, timeout=300
    )
    assert again.returncode == 0, again.stderr
    assert [int(r["epoch"]) for r in _metrics(best.parent)] == [1, 2, 3]


# ---------------------------------------------------------------------------- failures


def _wait_for(path: Path, procs: list[subprocess.Popen], timeout: float) -> None:
    end = time.monotonic() + timeout
    while not path.exists():
        if any(p.poll() is not None for p in procs) or time.monotonic() > end:
            for p in procs:
                _kill(p)
            pytest.fail(f"{path} never appeared: {[p.communicate() for p in procs]}")
        time.sleep(0.05)


# Long enough epochs (~1-3 s) that a kill right after epoch 1 lands inside epoch 2.
LONGER = [
    "--limit",
    "8000",
    "--val-size",
    "1000",
    "--batch-size",
    "64",
    "--device",
    "cpu",
    "--threads",
    "1",
    "--epochs",
    "3",
]


@pytest.mark.slow
@pytest.mark.parametrize("how", ["kill", "hang"])
def test_dead_or_hung_rank_stops_the_other_with_one_line(mnist_dir, tmp_path, how):
    args = [*LONGER, "--data-dir", str(mnist_dir), "--out", str(tmp_path), "--name", "k"]
    timeout_s = 8
    ranks = _launch_ranks(args, [tmp_path, tmp_path], timeout_s=timeout_s)
    try:
        _wait_for(tmp_path / "k" / "last.pt", ranks, timeout=240)
        # SIGKILL: the peer's sockets close at once; SIGSTOP: it hangs, the timeout must fire.
        os.kill(ranks[1].pid, signal.SIGKILL if how == "kill" else signal.SIGSTOP)
        # Bounded: rank 0 must give up by itself (the timeout plus slack; not a speed test).
        rc, out, err = _finish(ranks[0], timeout=timeout_s + 120)
    finally:
        for p in ranks:
            _kill(p)
            p.communicate()
    assert rc == 2, err
    assert "Traceback" not in err, err
    lines = [ln for ln in err.splitlines() if ln.startswith("lenet: error:")]
    assert len(lines) == 1, err
    assert "rank 0 of 2: lost contact with the other training processes" in lines[0]
    assert f"--resume {tmp_path / 'k' / 'last.pt'}" in lines[0]
    done = len(_metrics(tmp_path / "k"))
    assert 1 <= done < 3

    if how == "kill":  # every rank resumes from the same last.pt and finishes the run
        again = _launch_ranks(
            ["--resume", str(tmp_path / "k" / "last.pt"), "--threads", "1"], [tmp_path, tmp_path]
        )
        results = [_finish(p, 300) for p in again]
        assert [r[0] for r in results] == [0, 0], results
        assert "resuming" in results[0][2]
        rows = _metrics(tmp_path / "k")
        assert [int(r["epoch"]) for r in rows] == [1, 2, 3]


@pytest.mark.slow  # several processes, several epochs
def test_torchrun_max_restarts_resumes_from_last_pt(mnist_dir, tmp_path):
    args = [*LONGER, "--data-dir", str(mnist_dir), "--out", str(tmp_path), "--name", "m"]
    # Without this torchrun's shared rendezvous store can hand the restarted workers their
    # predecessors' addresses (pytorch/pytorch#135712); the README says the same.
    tr = _torchrun(2, args, tmp_path, "--max-restarts=1", TORCH_DISABLE_SHARE_RDZV_TCP_STORE="1")
    try:
        _wait_for(tmp_path / "m" / "last.pt", [tr], timeout=240)
        workers = _children(tr.pid)
        assert len(workers) == 2, workers
        os.kill(workers[-1], signal.SIGKILL)  # one rank dies mid-run
        rc, out, err = _finish(tr, 300)
    finally:
        _kill(tr)
    assert rc == 0, out + err
    assert "resuming" in err  # the restarted group continued from last.pt...
    rows = _metrics(tmp_path / "m")
    assert [int(r["epoch"]) for r in rows] == [1, 2, 3]  # ...keeping the epochs already done


def _children(pid: int) -> list[int]:
    """Child pids of ``pid`` (Linux /proc)."""
    kids: list[int] = []
    for task in Path(f"/proc/{pid}/task").iterdir():
        kids += [int(x) for x in (task / "children").read_text().split()]
    return sorted(kids)


# ---------------------------------------------------------------------------- the real recipe


@pytest.mark.slow
def test_two_processes_reach_one_process_accuracy_on_the_fast_recipe(mnist_dir, tmp_path):
    """The full fast recipe under torchrun (2 ranks) vs one process: test accuracy within 0.2."""
    common = [
        "--data-dir",
        str(mnist_dir),
        "--out",
        str(tmp_path),
        "--device",
        "cpu",
        "--threads",
        "1",
    ]
    tr = _torchrun(2, [*common, "--name", "two"], tmp_path)
    rc, _, err = _finish(tr, 900)
    assert rc == 0, err
    one = _popen(_lenet_train(*common, "--name", "one"), tmp_path, _env())
    rc, _, err = _finish(one, 900)
    assert rc == 0, err
    acc = {}
    for name in ("one", "two"):
        ev = run_cli(
            "eval",
            str(tmp_path / name / "best.pt"),
            "--data-dir",
            str(mnist_dir),
            "--json",
            "--no-plots",
        )
        assert ev.returncode == 0, ev.stderr
        acc[name] = 100 * json.loads(ev.stdout)["accuracy"]
    assert acc["one"] >= 98.8, acc
    assert abs(acc["one"] - acc["two"]) <= 0.2, acc


def test_nproc_forwards_every_given_flag(monkeypatch):
    """--nproc relaunches the same command: no flag may be dropped on the way (e.g. --augment)."""
    from lenet import distributed
    from lenet.cli import build_parser
    from lenet.cli.train import _FORWARD, _launch

    seen: list[list[str]] = []
    monkeypatch.setattr(distributed, "launch_local", lambda n, cmd: seen.append(cmd) or 0)
    argv = [
        "train",
        "--nproc",
        "2",
        "--augment",
        "both",
        "--model",
        "lenet5-plus",
        "--lr",
        "0.01",
        "--epochs",
        "3",
        "--batch-size",
        "64",
        "--seed",
        "5",
        "--name",
        "x",
    ]
    args = build_parser().parse_args(argv)
    assert _launch(args) == 0
    cmd = " ".join(seen[0])
    for flag in (
        "--augment both",
        "--model lenet5-plus",
        "--lr 0.01",
        "--epochs 3",
        "--batch-size 64",
        "--seed 5",
        "--name x",
    ):
        assert flag in cmd, (flag, cmd)
    settable = {
        a.dest for a in build_parser()._subparsers._group_actions[0].choices["train"]._actions
    }
    assert set(_FORWARD) <= settable
