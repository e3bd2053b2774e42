"""``softlab labels generate`` under ``torchrun``: several processes share the chunks of one store and must write
exactly the store a single process writes, byte for byte; a run killed part way is finished by rerunning the same
command with any number of processes.

Real processes: ``python -m torch.distributed.run --nproc_per_node 2 -m softlab.cli labels generate …`` on the
CPU (gloo), one thread each, against a single-process reference run made here. The image folder holds one file
that is not an image (``--on-bad-image skip``), so the skipped images that ranks record in their chunk markers
must reach the manifest as a single process lists them.
"""
import json
import os
import socket
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from tiny import write_image_folder

pytestmark = pytest.mark.skipif(not torch.distributed.is_available(), reason="needs torch.distributed")

HERE = Path(__file__).parent
ENV = {**os.environ, "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1", "PYTHONPATH": os.pathsep.join(
    [str(HERE.parent), *filter(None, [os.environ.get("PYTHONPATH")])])}
for _name in ("RANK", "LOCAL_RANK", "WORLD_SIZE", "MASTER_ADDR", "MASTER_PORT"):
    ENV.pop(_name, None)
HANG_GUARD = 180  # seconds; never reached unless something hangs
NUM_IMAGES, CHUNK_SIZE = 21, 2  # plus one undecodable file: 22 images, 11 chunks
BAD_INDEX = 4  # class0/img09x.png, after img00, img03, img06 and img09: not an image, skipped


def _make_images(root: Path) -> None:
    write_image_folder(root, NUM_IMAGES, height=(20, 5), width=(24, 4))
    (root / "class0" / "img09x.png").write_text("this is not an image\n")


def _make_teacher(path: Path) -> None:
    import timm

    from softlab.teachers.base import save_checkpoint

    with torch.random.fork_rng():
        torch.manual_seed(0)
        model = timm.create_model("test_resnet", pretrained=False, num_classes=3, in_chans=1)
    save_checkpoint(path, model, arch="timm:test_resnet", input_size=[1, 32, 32], mean=[0.5], std=[0.5],
                    class_names=["class0", "class1", "class2"])


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def _argv(lab, out) -> list[str]:
    return ["labels", "generate", "--data", str(lab.images), "--teacher", f"file:{lab.teacher}", "--out", str(out),
            "--crops", "6", "--chunk-size", str(CHUNK_SIZE), "--batch-size", "5", "--label-type",
            "marginal_smoothing_k2", "--seed", "3", "--device", "cpu", "--on-bad-image", "skip"]


def _torchrun(nproc: int, argv: list[str]) -> list[str]:
    return [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", str(nproc), "--master_addr",
            "127.0.0.1", "--master_port", str(_free_port()), "-m", "softlab.cli", *argv]


def _run(command: list[str], log: Path) -> str:
    with open(log, "wb") as handle:
        done = subprocess.run(command, stdout=handle, stderr=subprocess.STDOUT, env=ENV, timeout=HANG_GUARD)
    text = log.read_text()
    assert done.returncode == 0, text[-4000:]
    return text


@pytest.fixture(scope="module")
def lab(tmp_path_factory):
    from types import SimpleNamespace

    root = tmp_path_factory.mktemp("distributed")
    lab = SimpleNamespace(root=root, images=root / "images", teacher=root / "teacher.pth",
                          reference=root / "reference")
    _make_images(lab.images)
    _make_teacher(lab.teacher)
    _run([sys.executable, "-m", "softlab.cli", *_argv(lab, lab.reference)], root / "reference.log")
    return lab


def _manifest(store: Path) -> dict:
    return json.loads((store / "manifest.json").read_text())


def _assert_same_store(out: Path, reference: Path) -> None:
    names = sorted(p.name for p in reference.glob("*.npy"))
    assert names and names == sorted(p.name for p in out.glob("*.npy"))
    for name in [*names, "image_ids.json"]:
        assert (out / name).read_bytes() == (reference / name).read_bytes(), name
    mine, theirs = _manifest(out), _manifest(reference)
    assert mine["complete"] and theirs["complete"]
    assert mine["checksums"] == theirs["checksums"]
    assert mine["skipped"] == theirs["skipped"] and [e["index"] for e in mine["skipped"]] == [BAD_INDEX]
    assert mine["generation"]["batch_size"] == theirs["generation"]["batch_size"] == 5
    markers = sorted(p.name for p in (out / "chunks").glob("*.json"))
    assert markers == sorted(p.name for p in (reference / "chunks").glob("*.json"))
    for name in markers:
        assert json.loads((out / "chunks" / name).read_text()) == \
            json.loads((reference / "chunks" / name).read_text()), name
    assert not list(out.rglob("*.tmp"))


def test_two_ranks_write_the_store_one_process_writes(lab):
    out = lab.root / "two-ranks"
    printed = _run(_torchrun(2, _argv(lab, out)), lab.root / "two-ranks.log")
    _assert_same_store(out, lab.reference)
    assert _manifest(out)["generation"]["world_size"] == 2
    # one summary and one skip report, from rank 0
    assert printed.count("images_done") == 1
    assert printed.count("skipped 1 of 22 images that could not be decoded") == 1


# Rank 1 of 2 SIGKILLs itself just before writing its third chunk: with the pending chunks dealt round-robin it
# owns chunks 1, 3, 5, 7 and 9, so 1 and 3 are written and 5, 7 and 9 are not, whatever rank 0 manages meanwhile
# (torchrun then stops it, and fails).
_DYING_RANK = """
import os, signal, sys
from softlab.labels.store import LabelStore
write_chunk = LabelStore.write_chunk
def dying_write_chunk(self, chunk, rows, **kwargs):
    if os.environ["RANK"] == "1" and chunk == 5:
        os.kill(os.getpid(), signal.SIGKILL)
    return write_chunk(self, chunk, rows, **kwargs)
LabelStore.write_chunk = dying_write_chunk
from softlab.cli import main
sys.exit(main(sys.argv[1:]))
"""


def test_a_killed_rank_is_finished_by_rerunning_with_one_process(lab):
    out = lab.root / "killed"
    command = _torchrun(2, _argv(lab, out))
    at = command.index("-m", 3)  # torchrun's "-m softlab.cli": the same command behind a dying rank 1
    command[at:at + 2] = [sys.executable, "-c", _DYING_RANK]
    command.insert(3, "--no-python")
    log = lab.root / "killed.log"
    with open(log, "wb") as handle:
        failed = subprocess.run(command, stdout=handle, stderr=subprocess.STDOUT, env=ENV, timeout=HANG_GUARD)
    assert failed.returncode != 0, log.read_text()[-3000:]
    finished = {int(p.stem) for p in (out / "chunks").glob("*.json")}
    assert {1, 3} <= finished and not finished & {5, 7, 9}, (finished, log.read_text()[-3000:])
    assert not _manifest(out)["complete"]

    printed = _run([sys.executable, "-m", "softlab.cli", *_argv(lab, out)], lab.root / "resumed.log")
    _assert_same_store(out, lab.reference)
    assert "generated" in printed
