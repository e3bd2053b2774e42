"""Runs ``softlab`` commands in forked children of one warm interpreter, for tests that kill them with SIGKILL.

Importing torch, torchvision and timm takes seconds; forking an interpreter that has already imported them takes
milliseconds, so a test can start, kill and rerun a command many times. Each child runs ``softlab.cli.main(argv)``
exactly as ``python -m softlab.cli`` would, in a process of its own, and is killed for real.

Protocol (one JSON object per line): the test writes ``{"argv": [...], "log": path, "hook": optional}``; the server
forks, answers ``{"pid": N}``, waits for the child and answers ``{"pid": N, "returncode": rc}`` (``-9`` for a
child killed by SIGKILL, as with :mod:`subprocess`). The child's stdout and stderr go to ``log``. End of input
ends the server.

Hooks kill the child at points a timer cannot hit reliably:

``before_replace:<file name>:<n>``   SIGKILL just before the n-th ``os.replace`` onto a file of that name (e.g.
                                     ``manifest.json``: a label store killed while being created)
``torn_save:<file name>:<n>``        SIGKILL halfway through the n-th ``torch.save`` into a file of that name
                                     (e.g. ``last.pt.tmp``: a checkpoint killed mid-write)
"""
import io
import json
import os
import signal
import sys
import traceback


def _preload() -> None:
    import torch

    torch.set_num_threads(1)
    import timm  # noqa: F401
    import torchvision  # noqa: F401
    import tqdm.auto  # noqa: F401

    import softlab.cli  # noqa: F401
    import softlab.data  # noqa: F401
    import softlab.evaluate  # noqa: F401
    import softlab.labels.generate  # noqa: F401
    import softlab.teachers  # noqa: F401
    import softlab.teachers.timm_teachers  # noqa: F401
    import softlab.train.commands  # noqa: F401
    import softlab.train.run  # noqa: F401


def _die() -> None:
    sys.stdout.flush()
    sys.stderr.flush()
    os.kill(os.getpid(), signal.SIGKILL)


def _install(hook: str) -> None:
    kind, name, count = hook.split(":")
    count, seen = int(count), [0]

    def matches(target) -> bool:
        target = getattr(target, "name", target)  # a path, or an open file
        if not isinstance(target, (str, bytes, os.PathLike)) or os.path.basename(os.fsdecode(target)) != name:
            return False
        seen[0] += 1
        return seen[0] == count

    if kind == "before_replace":
        replace = os.replace

        def killing_replace(src, dst, *args, **kwargs):
            if matches(dst):
                _die()
            return replace(src, dst, *args, **kwargs)

        os.replace = killing_replace
    elif kind == "torn_save":
        import torch

        save = torch.save

        def torn_save(obj, f, *args, **kwargs):
            if not matches(f):
                return save(obj, f, *args, **kwargs)
            buffer = io.BytesIO()
            save(obj, buffer, *args, **kwargs)
            data = buffer.getvalue()
            handle = f if hasattr(f, "write") else open(f, "wb")
            handle.write(data[:len(data) // 2])
            handle.flush()
            os.fsync(handle.fileno())
            _die()

        torch.save = torn_save
    else:
        raise ValueError(f"unknown hook {hook!r}")


def _child(request: dict) -> None:
    code = 1
    try:
        log = os.open(request["log"], os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644)
        os.dup2(log, 1)
        os.dup2(log, 2)
        os.close(log)
        if request.get("hook"):
            _install(request["hook"])
        from softlab.cli import main

        code = main(request["argv"])
    except SystemExit as stop:
        code = stop.code if isinstance(stop.code, int) else 1
    except BaseException:
        traceback.print_exc()
    finally:
        sys.stdout.flush()
        sys.stderr.flush()
        os._exit(code or 0)


def serve() -> None:
    _preload()
    answer = sys.stdout
    print(json.dumps({"ready": True}), file=answer, flush=True)
    while True:
        line = sys.stdin.readline()
        if not line:
            os._exit(0)  # nothing to clean up: skip the slow teardown of torch's modules
        request = json.loads(line)
        pid = os.fork()
        if pid == 0:
            _child(request)
        print(json.dumps({"pid": pid}), file=answer, flush=True)
        _, status = os.waitpid(pid, 0)
        print(json.dumps({"pid": pid, "returncode": os.waitstatus_to_exitcode(status)}), file=answer, flush=True)


if __name__ == "__main__":
    serve()
