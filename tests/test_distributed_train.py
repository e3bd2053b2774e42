"""``softlab train`` under torchrun: two real CPU processes (gloo) against one.

- a 2-process run computes what one process computes (same global batch, same steps, same mixing draws, the
  gradient averaged with share weights), up to float summation order;
- a 2-process CLI run stopped mid-run (SIGINT to one worker: every rank stops at the same step, rank 0 writes
  the checkpoint) and resumed under torchrun ends bit-identical to an uninterrupted 2-process run;
- a recipe with per-image state (pskd) is refused under torchrun.

Every process runs with one thread; each launch imports torch once per process, so the file takes about a minute.
"""
import json
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from softlab.train import checkpoint, metrics_without_timing

pytestmark = pytest.mark.skipif(not torch.distributed.is_available() or not Path("/proc").is_dir(),
                                reason="needs torch.distributed (gloo) and /proc")

TIMEOUT = 240


def make_folder(root: Path, per_class: int = 9) -> Path:
    """Two class folders of small RGB images of slightly varying sizes."""
    rng = np.random.default_rng(0)
    for label, class_dir in enumerate(("cat", "dog")):
        (root / class_dir).mkdir(parents=True)
        for i in range(per_class):
            pixels = rng.integers(0, 256, (14 + i % 3, 15 - i % 2, 3), dtype=np.uint8)
            pixels[..., label] //= 4  # a little signal to learn
            Image.fromarray(pixels).save(root / class_dir / f"img{i}.png")
    return root


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def environment() -> dict:
    return {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONUNBUFFERED": "1"}


def torchrun(*args) -> list[str]:
    return [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2", "--master_addr", "127.0.0.1",
            "--master_port", str(free_port()), *args]


def run(command, cwd) -> subprocess.CompletedProcess:
    result = subprocess.run(command, cwd=cwd, env=environment(), capture_output=True, text=True, timeout=TIMEOUT)
    return result


def cli_train(folder: Path, out: Path, name: str, *extra) -> list[str]:
    return ["-m", "softlab.cli", "train", "--recipe", "hard", "--data", str(folder), "--eval-data", str(folder),
            "--student", "tiny_cnn", "--input-size", "12", "--epochs", "10", "--batch-images", "3",
            "--num-crops", "2", "--mixing", "selfmix", "--lr", "0.05", "--warmup-epochs", "0", "--seed", "3",
            "--device", "cpu", "--no-progress", "--out", str(out), "--name", name, *extra]


SCRIPT = '''
import sys
import torch
from softlab import distributed
from softlab.train import TrainConfig, train

folder, out, name = sys.argv[1:4]
torch.manual_seed(0)  # a batch-norm-free student: one process and two compute the same function of a batch
student = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(3 * 12 * 12, 16), torch.nn.Tanh(),
                              torch.nn.Linear(16, 2))
config = TrainConfig(recipe="hard", data=folder, eval_data=None, input_size=12, epochs=2, batch_images=5,
                     num_crops=2, mixing={"mode": "selfmix", "prob": 0.8}, lr=0.05, warmup_epochs=0, seed=1,
                     device="cpu", progress=False, out=out, name=name, mean=[0.5] * 3, std=[0.25] * 3)
train(config, student=student)
distributed.shutdown()
'''


def read_run(run_dir: Path):
    history = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
    state = checkpoint.load(run_dir / "checkpoints" / "last.pt")
    return history, state


def test_two_processes_compute_what_one_does(tmp_path):
    """18 images in steps of 5 (the last of 3): shares of 3/2 and 2/1 images, so the share weighting of the loss is
    exercised, as are the SelfMix draws each share takes from the step's generator. Tolerances: float32 forward
    and backward on batches of other sizes and DDP's summed-then-divided gradients round differently (about 1e-7
    relative per step); over 8 steps at lr 0.05 on losses of order 1 that stays far below 1e-5."""
    folder = make_folder(tmp_path / "images")
    script = tmp_path / "train_script.py"
    script.write_text(SCRIPT)
    root = Path(__file__).resolve().parents[1]
    single = run([sys.executable, str(script), str(folder), str(tmp_path / "runs"), "one"], root)
    assert single.returncode == 0, single.stderr[-3000:]
    double = run(torchrun(str(script), str(folder), str(tmp_path / "runs"), "two"), root)
    assert double.returncode == 0, double.stdout[-3000:] + double.stderr[-3000:]
    one_history, one = read_run(tmp_path / "runs" / "one")
    two_history, two = read_run(tmp_path / "runs" / "two")
    assert len(one_history) == len(two_history) == 2
    for a, b in zip(one_history, two_history):
        assert a["step"] == b["step"] == b["epoch"] * 4
        assert b["train_loss"] == pytest.approx(a["train_loss"], rel=1e-5, abs=1e-6)
        assert abs(b["train_top1"] - a["train_top1"]) <= 1 / 36 + 1e-12  # at most one near-tie flips
        assert b["lr"] == pytest.approx(a["lr"], rel=1e-12, abs=1e-15)
    for key, value in one["student"].items():
        torch.testing.assert_close(two["student"][key], value, rtol=1e-5, atol=1e-5)
    assert two["world_size"] == 2 and len(two["rng_ranks"]) == 2
    assert "rng_ranks" not in one


def _children(pid: int) -> list[int]:
    found = []
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                fields = (entry / "stat").read_text().rsplit(")", 1)[1].split()
            except OSError:
                continue
            if int(fields[1]) == pid:
                found.append(int(entry.name))
    return found


def test_cli_run_stops_and_resumes_exactly_under_torchrun(tmp_path):
    """A SIGINT to one worker after the first checkpoint stops both ranks at the same step; rank 0 writes the
    mid-epoch checkpoint, and ``--resume`` under torchrun finishes with the bits of an uninterrupted run (on the
    CPU). An epoch takes about 0.1 s, so the signal, sent within milliseconds of the first checkpoint, lands with
    nine epochs to spare."""
    folder = make_folder(tmp_path / "images", per_class=12)
    out, root = tmp_path / "runs", Path(__file__).resolve().parents[1]
    reference = run(torchrun(*cli_train(folder, out, "whole")), root)
    assert reference.returncode == 0, reference.stdout[-3000:] + reference.stderr[-3000:]
    assert "whole finished" in reference.stdout and reference.stdout.count("finished") == 1  # rank 0 prints

    process = subprocess.Popen(torchrun(*cli_train(folder, out, "cut")), cwd=root, env=environment(),
                               stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, start_new_session=True)
    try:
        last = out / "cut" / "checkpoints" / "last.pt"
        deadline = time.monotonic() + TIMEOUT
        while not last.exists() and process.poll() is None and time.monotonic() < deadline:
            time.sleep(0.01)
        workers = _children(process.pid)
        assert workers, "torchrun started no worker"
        os.kill(workers[-1], signal.SIGINT)
        output, _ = process.communicate(timeout=TIMEOUT)
    finally:
        if process.poll() is None:
            os.killpg(process.pid, signal.SIGKILL)
            process.wait()
    assert process.returncode == 0, output[-3000:]
    assert "stopped; resume with the same command plus --resume" in output, output[-3000:]
    stopped = checkpoint.load(out / "cut" / "checkpoints" / "last.pt")
    assert 1 <= stopped["epoch"] and (stopped["epoch"], stopped["step"]) != (10, 0)  # stopped after epoch 1
    resumed = run(torchrun(*cli_train(folder, out, "cut", "--resume")), root)
    assert resumed.returncode == 0, resumed.stdout[-3000:] + resumed.stderr[-3000:]

    whole_history, whole = read_run(out / "whole")
    cut_history, cut = read_run(out / "cut")
    assert metrics_without_timing(cut_history) == metrics_without_timing(whole_history)
    for key, value in whole["student"].items():
        assert torch.equal(cut["student"][key], value), key
    assert json.loads((out / "cut" / "eval.json").read_text()) == json.loads((out / "whole" / "eval.json").read_text())
    notes = json.loads((out / "whole" / "config.json").read_text())["resolved"]["notes"]
    assert any("batch-norm" in note for note in notes)
    assert not list(out.glob("*/checkpoints/*.tmp"))


def test_recipe_with_per_image_state_is_refused_under_torchrun(tmp_path):
    folder = make_folder(tmp_path / "images", per_class=3)
    result = run(torchrun("-m", "softlab.cli", "train", "--recipe", "pskd", "--data", str(folder), "--eval-data",
                          "none", "--student", "tiny_cnn", "--input-size", "12", "--epochs", "1", "--device", "cpu",
                          "--no-progress", "--out", str(tmp_path / "runs")), Path(__file__).resolve().parents[1])
    assert result.returncode != 0
    assert "not supported under torchrun" in result.stdout + result.stderr
    assert not (tmp_path / "runs").exists()  # refused before the run folder is made


def test_shares_of_a_step_make_up_the_single_process_batch():
    """In-process: every rank's block of a step (uneven blocks included) is the matching slice of the whole
    step's batch, with the same crops, and the step generator gives each share the whole batch's draws."""
    from softlab.train import build
    from softlab.train.engine import _ShareDraws
    from softlab.train.loader import MultiCropLoader, RandomCrops
    from tiny import NoiseImages

    dataset = NoiseImages(count=11, num_classes=3)
    loader = MultiCropLoader(dataset, RandomCrops(None, 3, seed=5), batch_images=4, size=8, seed=5)
    order = loader.epoch_order(1)
    for step in range(loader.steps_per_epoch):
        whole = loader.batch(1, step, order)
        for world in (2, 3):
            shares = [loader.batch(1, step, order, share=(rank, world)) for rank in range(world)]
            assert [s.offset for s in shares] == list(np.cumsum([0] + [len(s) for s in shares[:-1]]))
            assert {s.total for s in shares} == {len(whole)}
            # same crops; same-size images of a block may be cut in one batched matrix product, whose
            # float32 rounding depends on the block (pixels in [0, 1]: a few eps)
            torch.testing.assert_close(torch.cat([s.images for s in shares]), whole.images, rtol=0, atol=1e-6)
            assert torch.equal(torch.cat([s.targets for s in shares]), whole.targets)
            assert np.array_equal(np.concatenate([s.image_index for s in shares]), whole.image_index)
    assert [MultiCropLoader.share_bounds(5, rank, 2) for rank in range(2)] == [(0, 3), (3, 5)]
    full = build.step_rng(0, 1, 2)
    expected = (full.random(10), full.beta(0.8, 0.8, size=10), full.integers(0, 12, size=10))
    share = _ShareDraws(build.step_rng(0, 1, 2), offset=6, count=4, total=10)
    got = (share.random(4), share.beta(0.8, 0.8, size=4), share.integers(0, 12, size=4))
    for a, b in zip(expected, got):
        assert np.array_equal(a[6:], b)
