"""softlab's own processes keep freed memory for reuse (glibc), instead of remapping pages for each large tensor."""
import os
import platform
import subprocess
import sys
import textwrap

import pytest

from softlab import cli, runtime, workspace

GLIBC = platform.system() == "Linux" and platform.libc_ver()[0] == "glibc"

# A child process allocates a 64 MiB array and reports the bytes glibc serves as separate memory maps (mallinfo2's
# hblkhd): with the default settings the array is such a map; with freed memory kept, it comes from the heap.
PROBE = textwrap.dedent("""
    import ctypes, sys
    import numpy as np

    class MallInfo2(ctypes.Structure):
        _fields_ = [(name, ctypes.c_size_t) for name in ("arena", "ordblks", "smblks", "hblks", "hblkhd",
                                                         "usmblks", "fsmblks", "uordblks", "fordblks", "keepcost")]

    libc = ctypes.CDLL(None)
    libc.mallinfo2.restype = MallInfo2
    from softlab.runtime import keep_freed_memory
    applied = keep_freed_memory() if sys.argv[1] == "keep" else None
    before = libc.mallinfo2().hblkhd
    block = np.ones(64 << 20, dtype=np.uint8)
    print(applied, libc.mallinfo2().hblkhd - before)
""")


def probe(mode, **env):
    result = subprocess.run([sys.executable, "-c", PROBE, mode], capture_output=True, text=True, check=True,
                            env={**os.environ, **env})
    applied, mapped = result.stdout.split()
    return applied, int(mapped)


@pytest.mark.skipif(not GLIBC, reason="mallopt is glibc's: elsewhere keep_freed_memory does nothing")
def test_large_arrays_come_from_the_heap_once_freed_memory_is_kept():
    page = os.sysconf("SC_PAGE_SIZE")
    applied, mapped = probe("default")
    assert applied == "None" and 64 << 20 < mapped <= (64 << 20) + page  # the array and its header, in pages
    assert probe("keep") == ("True", 0)
    applied, mapped = probe("keep", SOFTLAB_KEEP_FREED_MEMORY="0")
    assert applied == "False" and 64 << 20 < mapped <= (64 << 20) + page


def test_the_softlab_command_applies_it_but_not_calls_from_python(monkeypatch, tmp_path, capsys):
    calls = []
    monkeypatch.setattr(runtime, "keep_freed_memory", lambda: calls.append(1) or True)
    monkeypatch.setattr(sys, "argv", ["softlab", "labels", "verify", str(tmp_path)])
    assert cli.main() == 2  # not a store; what matters is the call before it
    assert calls == [1]
    assert cli.main(["labels", "verify", str(tmp_path)]) == 2
    assert calls == [1]
    capsys.readouterr()


def test_a_notebook_workspace_applies_it(monkeypatch):
    calls = []
    monkeypatch.setattr(workspace, "keep_freed_memory", lambda: calls.append(1) or True)
    workspace.Workspace("probe", None, None, None, None, "runs")
    assert calls == [1]
