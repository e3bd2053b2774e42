"""Kill tests with real processes: ``softlab labels generate`` and ``softlab train`` are SIGKILLed at seeded random
points of their work (and at a few exact points: mid store creation, mid checkpoint write), rerun with the same
command until they finish, and must then match an uninterrupted run bit for bit.

The commands run in processes forked from one warm interpreter (``kill_target.py``), so that each start costs
milliseconds instead of the seconds of importing torch; the reference label store is made by a fresh
``python -m softlab.cli``. Kill times are set by progress, not by the clock: wait until the k-th chunk marker
(or metrics line, or file) exists, then sleep a random fraction of the time one chunk (epoch) takes, measured on
the way, so on a slow or a fast machine alike the kills land inside the work. Every process runs with one thread
on the CPU, where identical work gives identical bits.
"""
import hashlib
import json
import os
import random
import select
import signal
import statistics
import subprocess
import sys
import time
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest
import torch

from softlab.labels import LabelStore
from softlab.train import RunControl, TrainConfig, metrics_without_timing, train
from softlab.train import checkpoint
from softlab.train.engine import TIMING_KEYS
from tiny import write_image_folder

pytestmark = pytest.mark.skipif(not hasattr(os, "fork"), reason="needs fork and SIGKILL")

HERE = Path(__file__).parent
ENV = {**os.environ, "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1", "PYTHONPATH": os.pathsep.join(
    [str(HERE.parent), *filter(None, [os.environ.get("PYTHONPATH")])])}
HANG_GUARD = 300  # seconds; never reached unless something hangs
KILLED = -signal.SIGKILL
NUM_IMAGES, CHUNK_SIZE = 40, 3
NUM_CHUNKS = -(-NUM_IMAGES // CHUNK_SIZE)  # 14; the last chunk holds one image
EPOCHS = 6
STORE_FILES = ("image_size.npy", "topk_idx.npy", "topk_prob.npy", "y_s.npy", "entropy.npy", "targets.npy",
               "image_ids.json")  # the compact layout: the crop regions are recomputed, not stored


# ----- processes
class Server:
    """The warm interpreter of ``kill_target.py``: starts one command at a time in a forked child."""

    def __init__(self, log: Path):
        self.log = log
        with open(log, "wb") as errors:
            self.process = subprocess.Popen([sys.executable, str(HERE / "kill_target.py")], stdin=subprocess.PIPE,
                                            stdout=subprocess.PIPE, stderr=errors, env=ENV)
        self.buffer = b""
        self.child = None

    def read(self, timeout: float) -> dict | None:
        """The next answer line, or None when none comes within ``timeout`` seconds."""
        deadline = time.monotonic() + timeout
        while b"\n" not in self.buffer:
            ready, _, _ = select.select([self.process.stdout], [], [], max(deadline - time.monotonic(), 0))
            if not ready:
                return None
            data = os.read(self.process.stdout.fileno(), 1 << 16)
            if not data:
                raise RuntimeError(f"the command server ended: {self.log.read_text()[-3000:]}")
            self.buffer += data
        line, self.buffer = self.buffer.split(b"\n", 1)
        return json.loads(line)

    def wait_ready(self) -> None:
        answer = self.read(HANG_GUARD)
        assert answer == {"ready": True}, (answer, self.log.read_text()[-3000:])

    def start(self, argv: list[str], log: Path, hook: str | None = None) -> "Child":
        request = {"argv": [str(a) for a in argv], "log": str(log), "hook": hook}
        self.process.stdin.write((json.dumps(request) + "\n").encode())
        self.process.stdin.flush()
        answer = self.read(HANG_GUARD)
        assert answer is not None and "pid" in answer, answer
        self.child = Child(self, answer["pid"], log)
        return self.child

    def close(self) -> None:
        if self.child is not None and self.process.poll() is None:
            self.child.kill()  # a test that failed midway may leave its command running
        self.process.stdin.close()
        try:
            self.process.wait(timeout=30)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait()


class Child:
    def __init__(self, server: Server, pid: int, log: Path):
        self.server, self.pid, self.log_path = server, pid, log
        self.returncode = None

    def poll(self) -> int | None:
        if self.returncode is None:
            answer = self.server.read(0)
            if answer is not None:
                assert answer["pid"] == self.pid, answer
                self.returncode = answer["returncode"]
        return self.returncode

    def wait(self) -> int:
        if self.returncode is None:
            answer = self.server.read(HANG_GUARD)
            assert answer is not None, f"command {self.pid} hangs: {self.log()[-3000:]}"
            self.returncode = answer["returncode"]
        return self.returncode

    def kill(self) -> int:
        if self.poll() is None:
            try:
                os.kill(self.pid, signal.SIGKILL)
            except ProcessLookupError:  # it ended by itself a moment ago
                pass
        return self.wait()

    def log(self) -> str:
        return self.log_path.read_text(errors="replace")


def kill_when(child: Child, progress, target: int, fraction: float, period: float) -> tuple[int, float]:
    """Wait until ``progress()`` reaches ``target``, sleep ``fraction`` of one unit of work, SIGKILL the child.

    The unit (a chunk, an epoch) starts as ``period`` seconds and is re-measured from the progress seen here, so
    the kill lands inside the next unit however fast this machine is today. Returns (returncode, period); a child
    that finished before the kill point returns its own code (0).
    """
    first_seen = {}
    while child.poll() is None:
        count = progress()
        first_seen.setdefault(count, time.monotonic())
        if count >= target:
            counts = sorted(first_seen)
            if len(counts) >= 3:  # the first count was there at the start: its time is not a unit boundary
                a, b = counts[-2], counts[-1]
                period = (first_seen[b] - first_seen[a]) / (b - a)
            time.sleep(fraction * period)
            return child.kill(), period
        time.sleep(0.002)
    return child.returncode, period


# ----- the tiny data set, teacher and reference store
def _make_images(root: Path) -> None:
    write_image_folder(root, NUM_IMAGES, height=(24, 7), width=(30, 5))


def _make_teacher(path: Path) -> None:
    import timm

    from softlab.teachers.base import save_checkpoint

    with torch.random.fork_rng():
        torch.manual_seed(0)
        model = timm.create_model("test_resnet", pretrained=False, num_classes=3, in_chans=1)
        with torch.no_grad():
            model.get_classifier().weight.mul_(40)  # confident enough that FerKD's calibration drops some crops
    save_checkpoint(path, model, arch="timm:test_resnet", input_size=[1, 32, 32], mean=[0.5], std=[0.5],
                    class_names=["class0", "class1", "class2"])


def label_argv(lab, out) -> list:
    return ["labels", "generate", "--data", lab.images, "--teacher", f"file:{lab.teacher}", "--out", out,
            "--crops", "16", "--chunk-size", str(CHUNK_SIZE), "--batch-size", "20",
            "--label-type", "marginal_smoothing_k2", "--seed", "3", "--device", "cpu"]


def train_argv(lab, out) -> list:
    return ["train", "--recipe", "ferkd", "--t-low", "0.02", "--t-mid", "0.2", "--t-top", "0.98",
            "--data", lab.images, "--store", lab.reference_store, "--eval-data", lab.images,
            "--student", "tiny_cnn", "--epochs", str(EPOCHS), "--batch-images", "8", "--num-crops", "2",
            "--seed", "3", "--device", "cpu", "--no-progress", "--out", out, "--name", "run"]


@pytest.fixture(scope="module")
def lab(tmp_path_factory):
    root = tmp_path_factory.mktemp("kill")
    lab = SimpleNamespace(images=root / "images", teacher=root / "teacher.pth", reference_store=root / "reference")
    _make_images(lab.images)
    _make_teacher(lab.teacher)
    # the warm server and the reference store (made by a fresh interpreter) start side by side
    server = Server(root / "server.log")
    try:
        command = [sys.executable, "-m", "softlab.cli", *map(str, label_argv(lab, lab.reference_store))]
        with open(root / "reference.log", "wb") as log:
            reference = subprocess.run(command, stdout=log, stderr=subprocess.STDOUT, env=ENV, timeout=HANG_GUARD)
        assert reference.returncode == 0, (root / "reference.log").read_text()[-3000:]
        server.wait_ready()
        lab.server = server
        yield lab
    finally:
        server.close()


# ----- label generation
def _markers(store: Path) -> list[Path]:
    return sorted((store / "chunks").glob("*.json"))


def _count(store: Path) -> int:
    try:
        return sum(1 for entry in os.scandir(store / "chunks") if entry.name.endswith(".json"))
    except FileNotFoundError:  # not made yet, or being replaced (--overwrite)
        return 0


def _chunk_seconds(store: Path) -> float:
    """Median time between two chunk markers of a finished store."""
    times = [p.stat().st_mtime_ns / 1e9 for p in _markers(store)]
    return statistics.median(b - a for a, b in zip(times, times[1:]))


def _check_finished_chunks(store: Path) -> None:
    """Every chunk with a marker holds exactly the rows its marker's checksums describe."""
    opened = None
    for marker_path in _markers(store):
        marker = json.loads(marker_path.read_text())
        for name, digest in marker["sha256"].items():
            if (store / f"{name}.npy").exists():
                rows = np.load(store / f"{name}.npy", mmap_mode="r")[marker["start"]:marker["stop"]]
            else:  # the compact layout's crop regions, recomputed from the seed and the image sizes
                opened = opened or LabelStore.open(store, allow_partial=True, verify="none")
                rows = getattr(opened, name)[marker["start"]:marker["stop"]]
            assert hashlib.sha256(np.ascontiguousarray(rows).tobytes()).hexdigest() == digest, (marker_path, name)


def _manifest(store: Path) -> dict:
    manifest = json.loads((store / "manifest.json").read_text())
    return {k: v for k, v in manifest.items() if k not in ("created", "generation")}  # a time, a throughput


def test_label_generation_killed_at_random_points_resumes_identically(lab, tmp_path):
    rng = random.Random(20240611)
    server, out = lab.server, tmp_path / "store"
    argv = label_argv(lab, out)

    # killed while creating the store, just before its manifest is published: the folder is not a store yet
    child = server.start(argv, tmp_path / "create.log", hook="before_replace:manifest.json:1")
    assert child.wait() == KILLED, child.log()[-3000:]
    assert out.is_dir() and not (out / "manifest.json").exists()
    child = server.start(argv, tmp_path / "refused.log")
    assert child.wait() == 2 and "is not a label store" in child.log(), child.log()[-3000:]

    # --overwrite replaces the half-made folder; that run and the reruns of the same command are killed at random
    # points: after the k-th chunk marker (k two to four chunks ahead), a random part of a chunk's time later
    period, outcomes = _chunk_seconds(lab.reference_store), []
    for attempt in range(3):
        done = _count(out)
        target = min(done + rng.randint(2, 4), NUM_CHUNKS - 1)
        fraction = rng.uniform(0.1, 0.9)
        command = argv + ["--overwrite"] if attempt == 0 else argv
        child = server.start(command, tmp_path / f"kill{attempt}.log")
        code, period = kill_when(child, lambda: _count(out), target, fraction, period)
        assert code in (KILLED, 0), child.log()[-3000:]
        complete = json.loads((out / "manifest.json").read_text()).get("complete", False)
        outcomes.append({"target": target, "fraction": round(fraction, 2), "code": code,
                         "chunks": len(_markers(out)), "complete": complete})
        _check_finished_chunks(out)
    print("label generation kills:", outcomes)
    assert sum(o["code"] == KILLED and not o["complete"] for o in outcomes) >= 2, outcomes

    child = server.start(argv, tmp_path / "finish.log")
    assert child.wait() == 0, child.log()[-3000:]

    reference = lab.reference_store
    for name in STORE_FILES:
        assert (out / name).read_bytes() == (reference / name).read_bytes(), name
        if name.endswith(".npy"):
            a, b = np.load(out / name), np.load(reference / name)
            assert a.dtype == b.dtype and a.shape == b.shape and a.tobytes() == b.tobytes(), name
    assert [p.name for p in _markers(out)] == [p.name for p in _markers(reference)] == \
        [f"{c:06d}.json" for c in range(NUM_CHUNKS)]
    for mine, theirs in zip(_markers(out), _markers(reference)):
        assert json.loads(mine.read_text()) == json.loads(theirs.read_text()), mine.name
    assert _manifest(out) == _manifest(reference) and _manifest(out)["complete"]
    assert set(_manifest(out)["checksums"]) == {n[:-4] for n in STORE_FILES if n.endswith(".npy")} | {"coords", "flip"}
    resumed, whole = LabelStore.open(out, verify="full"), LabelStore.open(reference)
    np.testing.assert_array_equal(resumed.coords, whole.coords)
    np.testing.assert_array_equal(resumed.flip, whole.flip)
    assert not list(out.rglob("*.tmp"))


# ----- training
def _history(run: Path) -> list[dict]:
    path = run / "metrics.jsonl"
    return [json.loads(line) for line in path.read_text().splitlines()] if path.exists() else []


def _lines(run: Path) -> int:
    try:
        return len((run / "metrics.jsonl").read_text().splitlines())
    except FileNotFoundError:
        return 0


def _checkpoint_epoch(run: Path) -> int | None:
    path = run / "checkpoints" / "last.pt"
    return torch.load(path, weights_only=True)["epoch"] if path.exists() else None


def test_training_killed_at_random_points_resumes_identically(lab, tmp_path):
    rng = random.Random(1406)
    server = lab.server
    child = server.start(train_argv(lab, tmp_path / "reference"), tmp_path / "reference.log")
    assert child.wait() == 0, child.log()[-3000:]
    reference = tmp_path / "reference" / "run"
    period = statistics.median(m["seconds"] + m.get("eval_seconds", 0.0) for m in _history(reference))

    run = tmp_path / "killed" / "run"
    argv = train_argv(lab, tmp_path / "killed")
    resume, outcomes = argv + ["--resume"], []

    def record(what, code):
        assert code in (KILLED, 0), child.log()[-3000:]
        _history(run)  # every line parses: metrics.jsonl is never left half-written
        outcomes.append({"kill": what, "code": code, "lines": _lines(run), "checkpoint": _checkpoint_epoch(run),
                         "finished": (run / "eval.json").exists()})

    # 1. in the first epoch, before any checkpoint: config.json is written as training starts
    child = server.start(argv, tmp_path / "kill1.log")
    code, _ = kill_when(child, lambda: int((run / "config.json").exists()), 1, rng.uniform(0.0, 0.5), period)
    record("first epoch", code)
    # 2. mid-epoch, one or two epochs on (reruns add --resume: it starts afresh while there is no checkpoint)
    child = server.start(resume, tmp_path / "kill2.log")
    code, period = kill_when(child, lambda: _lines(run), _lines(run) + rng.randint(1, 2), rng.uniform(0.2, 0.8),
                             period)
    record("mid-epoch", code)
    # 3. as soon as an epoch's metrics line appears: just before, during or just after its checkpoint is written
    child = server.start(resume, tmp_path / "kill3.log")
    code, period = kill_when(child, lambda: _lines(run), _lines(run) + rng.randint(1, 2), 0.0, period)
    record("epoch end", code)
    assert sum(o["code"] == KILLED and not o["finished"] for o in outcomes) >= 2, outcomes

    # 4. halfway through writing a checkpoint: the previous one stays, a partial last.pt.tmp is left behind
    before = _checkpoint_epoch(run)
    nth = rng.randint(1, max(1, min(2, EPOCHS - (before or 0))))  # the first or second save this rerun makes
    child = server.start(resume, tmp_path / "kill4.log", hook=f"torn_save:last.pt.tmp:{nth}")
    assert child.wait() == KILLED, child.log()[-3000:]
    record("checkpoint write", KILLED)
    assert (run / "checkpoints" / "last.pt.tmp").exists()
    if before is not None:
        assert checkpoint.load(run / "checkpoints" / "last.pt")["epoch"] >= before
    # a torn last line, as a writer without atomic replacement could leave, is ignored on resume
    with open(run / "metrics.jsonl", "a") as handle:
        handle.write('{"epoch": 5, "step": 25, "train_loss": 1.09')

    child = server.start(resume, tmp_path / "finish.log")
    assert child.wait() == 0, child.log()[-3000:]
    assert "no readable line" not in child.log()
    print("training kills:", outcomes)

    assert metrics_without_timing(_history(run)) == metrics_without_timing(_history(reference)), outcomes
    assert [m["epoch"] for m in _history(run)] == list(range(1, EPOCHS + 1))
    mine = torch.load(run / "checkpoints" / "last.pt", weights_only=True)
    theirs = torch.load(reference / "checkpoints" / "last.pt", weights_only=True)
    assert (mine["epoch"], mine["step"]) == (theirs["epoch"], theirs["step"]) == (EPOCHS, 0)
    assert mine["student"].keys() == theirs["student"].keys()
    assert all(torch.equal(mine["student"][k], theirs["student"][k]) for k in theirs["student"]), outcomes
    final = [{k: v for k, v in json.loads((r / "eval.json").read_text()).items() if k not in TIMING_KEYS}
             for r in (run, reference)]
    assert final[0] == final[1]
    assert not list(run.rglob("*.tmp"))


# ----- a history that lost lines (in process)
def test_resume_reports_metrics_lines_it_cannot_recover(tmp_path):
    from softlab.labels import generate_labels
    from tiny import LinearTeacher, NoiseImages

    data = NoiseImages(count=12)
    store = generate_labels(data, LinearTeacher(), tmp_path / "store", num_crops=4, label_type="marginal_smoothing_k2",
                            progress=False, device="cpu")
    config = TrainConfig(recipe="fkd", out=str(tmp_path / "runs"), student="tiny_cnn", student_kwargs={"width": 4},
                         input_size=12, epochs=3, batch_images=6, num_crops=2, lr=0.05, eval_data=None,
                         progress=False, device="cpu", seed=3)
    full = train(config.replace(name="full"), dataset=data, store=store)
    control = RunControl()

    def stop_in_epoch_3(event):
        if event.kind == "step" and event.step == 5:
            control.request_stop()

    stopped = train(config, dataset=data, store=store, control=control, callbacks=[stop_in_epoch_3])
    assert stopped.status == "stopped" and len(stopped.history) == 2
    metrics = Path(stopped.run_dir) / "metrics.jsonl"
    metrics.write_text(metrics.read_text().splitlines()[1] + "\n")  # epoch 1's line lost
    with pytest.warns(RuntimeWarning, match=r"no readable line for epoch\(s\) 1;"):
        resumed = train(config, dataset=data, store=store, resume=True)
    assert metrics_without_timing(resumed.history) == metrics_without_timing(full.history[1:])
    a = torch.load(Path(full.run_dir) / "checkpoints" / "last.pt", weights_only=True)["student"]
    b = torch.load(Path(resumed.run_dir) / "checkpoints" / "last.pt", weights_only=True)["student"]
    assert all(torch.equal(a[k], b[k]) for k in a)
