"""utils/kernel_compile.py: the faster kernel compile path Jittor is pointed at on the CPU."""
import glob
import os
import subprocess
import sys
import uuid

import jittor as jt
import numpy as np
import pytest

from utils import kernel_compile

pytestmark = pytest.mark.skipif(kernel_compile.STATUS.startswith("off"),
                                reason=f"fast kernel compiles not active: {kernel_compile.STATUS}")


def test_jittor_uses_the_precompiled_header_and_the_wrapper():
    assert kernel_compile.STATUS == "precompiled headers, direct g++, kernel index"
    flags = jt.flags.cc_flags
    header = flags.split("-include ")[1].split()[0]
    assert os.path.isfile(header) and os.path.getsize(header + ".gch") > 1_000_000
    assert jt.flags.python_path.endswith("compile_kernel.sh")
    assert os.access(jt.flags.python_path, os.X_OK)


def _fake_tools(tmp_path):
    """A stand-in compiler and assembly tuner that log how they were called."""
    log = tmp_path / "calls.txt"
    cc = tmp_path / "fake_cc.sh"
    cc.write_text(f'#!/bin/sh\necho "cc $*" >> {log}\n')
    cc.chmod(0o755)
    tuner = tmp_path / "asm_tuner.py"
    tuner.write_text(f"import sys\nopen({str(log)!r}, 'a').write('tuner ' + ' '.join(sys.argv[1:]) + '\\n')\n")
    return cc, tuner, log


@pytest.mark.parametrize("source, via_tuner", [("int x;\n", False),
                                               ("//@begin replace \"a\" \"b\"\nint x;\n//@end\n", True)])
def test_wrapper_runs_the_compiler_unless_the_source_needs_the_assembly_pass(tmp_path, source, via_tuner):
    cc, tuner, log = _fake_tools(tmp_path)
    src = tmp_path / "k_op.cc"
    src.write_text(source)
    out = tmp_path / "k_op.so"
    cmd = f'{jt.flags.python_path} {tuner} --cc_path={cc} "{src}" -O2 -o "{out}"'
    subprocess.run(cmd, shell=True, check=True)
    line = log.read_text().strip()
    if via_tuner:
        assert line == f"tuner --cc_path={cc} {src} -O2 -o {out}"
    else:
        assert line == f"cc {src} -O2 -o {out}"


def test_kernels_compiled_through_the_fast_path_compute_correct_values():
    """An element-wise kernel and a reduction (compiled through it on a fresh cache)."""
    rng = np.random.RandomState(7)
    a = rng.rand(3, 5, 7).astype(np.float32)
    b = rng.rand(3, 5, 7).astype(np.float32)
    got = (jt.array(a) * 1.5 - jt.array(b).exp() * 0.25).sum(dim=1).numpy()
    want = (a * 1.5 - np.exp(b) * 0.25).sum(axis=1)
    np.testing.assert_allclose(got, want, rtol=1e-5)


def test_off_switch_leaves_jittor_as_it_is():
    code = ("from utils import runtime; runtime.setup()\nimport jittor as jt\n"
            "from utils import kernel_compile\n"
            "print(kernel_compile.STATUS, jt.flags.python_path.endswith('compile_kernel.sh'), "
            "'-include' in jt.flags.cc_flags)")
    env = dict(os.environ, DFORMER_FAST_COMPILE="0")
    out = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True,
                         cwd=os.path.dirname(os.path.dirname(os.path.abspath(__file__))), timeout=300)
    assert out.stdout.split()[-3:] == ["off", "False", "False"], out.stdout + out.stderr


_ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

# A kernel no other test builds (the tag is in its source, so in its key); the child
# prints its value and how many kernels the index opened / Jittor compiled for it.
_INDEX_CHILD = """
import sys
from utils import runtime; runtime.setup()
import jittor as jt, numpy as np
from utils import kernel_compile
x = jt.array(np.arange(6, dtype=np.float32))
x.sync()
before = kernel_compile.kernel_index_counts()
y = jt.code(x.shape, x.dtype, [x], cpu_src="const int tag_TAG = 1; for (int i = 0; i < in0_shape0; i++) @out(i) = @in0(i) * 3 + tag_TAG;")
values = y.numpy().tolist()
after = kernel_compile.kernel_index_counts()
print("RESULT", values, after[0] - before[0], after[1] - before[1])
"""


def _index_child(tag):
    code = _INDEX_CHILD.replace("TAG", tag)
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                         cwd=_ROOT, timeout=300)
    line = [l for l in out.stdout.splitlines() if l.startswith("RESULT")]
    assert out.returncode == 0 and line, out.stdout[-2000:] + out.stderr[-3000:]
    parts = line[0].split()
    return [float(v.strip("[],")) for v in parts[1:7]], int(parts[7]), int(parts[8])


def test_kernel_index_opens_a_compiled_kernel_without_compiling_it_again():
    tag = uuid.uuid4().hex
    want = [3 * i + 1.0 for i in range(6)]
    assert _index_child(tag) == (want, 0, 1)        # new kernel: compiled, recorded
    assert _index_child(tag) == (want, 1, 0)        # next process: opened from the index
    # a library that is not the recorded one (rebuilt, touched) is never trusted
    libs = [p for p in glob.glob(os.path.join(jt.flags.cache_path, "jit", "code_*.so"))
            if tag in open(p[:-3] + ".cc", errors="replace").read()]
    assert len(libs) == 1
    os.utime(libs[0], None)
    assert _index_child(tag) == (want, 0, 1)
    assert _index_child(tag) == (want, 1, 0)


def test_kernel_index_entries_name_the_key_they_stand_for():
    folder = os.path.join(os.path.dirname(jt.flags.cc_flags.split("-include ")[1].split()[0]),
                          "index")
    entries = [p for p in glob.glob(os.path.join(folder, "*")) if "/.tmp-" not in p]
    assert entries
    with open(entries[0], "rb") as f:
        magic, flags, lib, symbol, stamp, key = f.read().split(b"\n", 5)
    assert magic == b"dformer-kernel-index 1" and len(flags) == 16
    assert os.path.isfile(lib.decode()) and symbol.startswith(b"_ZN6jittor")
    assert os.path.basename(entries[0]).endswith(f"_{len(key)}")
