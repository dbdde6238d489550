"""Point Jittor at an installed CUDA toolkit, offline (called by :func:`utils.runtime.setup`).

Jittor 1.3.11 downloads whatever CUDA piece it does not find at import: a whole CUDA +
cuDNN build when no ``nvcc`` is on the PATH (and a driver exists), and cutt, CUTLASS and
NCCL sources whenever a GPU is used. On a machine without network each of those ends the
import. :func:`configure` therefore decides everything before Jittor looks:

* ``nvcc``: ``$nvcc_path``, else ``$CUDA_HOME/bin``, the PATH, ``/usr/local/cuda/bin``,
  ``/opt/cuda/bin``. Jittor takes the toolkit folder from the real path of ``nvcc`` and
  needs ``<toolkit>/include/cuda_runtime.h`` and ``<toolkit>/lib64/libcudart.so`` there,
  and the cuBLAS and cuRAND headers and libraries in its search folders. Those the toolkit
  lacks are taken from PyTorch's ``nvidia-*`` wheels: Jittor is then given a merged toolkit
  folder of links (``<jittor cache>/dformer_cuda/toolkit-*``).
* cuDNN: Jittor's cuDNN operators are written against cuDNN 8 (its split
  ``libcudnn_*_infer/train`` libraries); with no cuDNN 8 in Jittor's search folders,
  ``conv_opt=1`` makes Jittor skip cuDNN and run convolutions with its own CUDA kernels.
* cutt and CUTLASS are switched off (``use_cutt=0``, ``use_cutlass=0``; Jittor has its own
  transposes and matrix products); NCCL (only used under MPI) comes from ``$nccl_*_path``
  or a PyTorch ``nvidia-nccl`` wheel, else ``use_nccl=0`` (then each MPI process is given
  the GPU of its local rank through ``CUDA_VISIBLE_DEVICES``, which NCCL would otherwise do).

When a driver exists but the toolkit is incomplete, ``nvcc_path`` is set to empty (the CPU
is used, nothing is downloaded) and :data:`STATUS` names what is missing;
``init_device(use_cuda=True)`` and ``install.sh --cuda`` report it as an error. Variables
the user already set are kept. ``DFORMER_CUDA=0`` hides the GPU.
"""
import glob
import hashlib
import os
import re
import shutil
import subprocess
import sys

STATUS = "not checked"
USABLE = False

_STANDARD_NVCC = ("/usr/local/cuda/bin/nvcc", "/opt/cuda/bin/nvcc")
_ARCH = "aarch64" if os.uname().machine in ("aarch64", "arm64") else "x86_64"


def _lib_dirs(home, nvcc):
    """Folders Jittor searches for CUDA libraries (compile_extern.setup_cuda_lib)."""
    lib64 = (f"/usr/lib/{_ARCH}-linux-gnu" if nvcc == "/usr/bin/nvcc"
             else os.path.join(home, "lib64"))
    return [os.path.join(home, "bin"), lib64,
            os.path.join(home, "targets", f"{_ARCH}-linux", "lib"),
            f"/usr/lib/{_ARCH}-linux-gnu", "/usr/lib"]


def _include_dirs(home):
    return [os.path.join(home, "include"),
            os.path.join(home, "targets", f"{_ARCH}-linux", "include"), "/usr/include"]


def _find(dirs, name):
    return next((os.path.join(d, name) for d in dirs if os.path.isfile(os.path.join(d, name))),
                None)


def find_nvcc(env=None):
    """Path of ``nvcc`` (see the module docstring for the order), or None."""
    env = os.environ if env is None else env
    if env.get("nvcc_path"):
        return env["nvcc_path"]   # the user's choice, checked as it is
    candidates = []
    for var in ("CUDA_HOME", "CUDA_PATH"):
        if env.get(var):
            candidates.append(os.path.join(env[var], "bin", "nvcc"))
    on_path = shutil.which("nvcc", path=env.get("PATH", os.defpath))
    candidates += ([on_path] if on_path else []) + list(_STANDARD_NVCC)
    found = [c for c in candidates if os.path.isfile(c) and os.access(c, os.X_OK)]
    # a wrapper script on the PATH (say /usr/local/bin/nvcc) does not lead Jittor to the
    # headers and libraries: prefer an nvcc that sits in its toolkit
    return next((c for c in found if not _runtime_problems(c)), found[0] if found else None)


def nvcc_version(nvcc):
    """(major, minor) from ``nvcc --version``, or None."""
    try:
        out = subprocess.run([nvcc, "--version"], capture_output=True, text=True,
                             timeout=60).stdout
    except (OSError, subprocess.SubprocessError):
        return None
    m = re.search(r"release (\d+)\.(\d+)", out)
    return (int(m.group(1)), int(m.group(2))) if m else None


def _cudnn_major(header_dir):
    for name in ("cudnn_version.h", "cudnn.h"):
        path = os.path.join(header_dir, name)
        if os.path.isfile(path):
            with open(path, errors="replace") as f:
                m = re.search(r"#define\s+CUDNN_MAJOR\s+(\d+)", f.read())
            if m:
                return int(m.group(1))
    return None


def _site_package_dirs():
    return [p for p in sys.path if p.endswith(("site-packages", "dist-packages"))
            and os.path.isdir(os.path.join(p, "nvidia"))]


def _wheel_file(site_dirs, sub, pattern):
    """First ``<site>/nvidia/<package>/<sub>/<pattern>`` of the PyTorch ``nvidia-*`` wheels."""
    for site in site_dirs:
        hits = sorted(glob.glob(os.path.join(site, "nvidia", "*", sub, pattern)))
        if hits:
            return hits[0]
    return None


def _link(target, link):
    """Make ``link`` point at ``target`` (atomically replaced when it points elsewhere)."""
    if os.path.islink(link) and os.readlink(link) == target:
        return
    tmp = f"{link}.tmp{os.getpid()}"
    os.symlink(target, tmp)
    os.replace(tmp, link)


def _merged_toolkit(root, nvcc, home, headers, libraries):
    """A toolkit folder Jittor can read: ``bin/nvcc`` runs the real one, ``include`` and
    ``lib64`` hold links to the toolkit's own entries plus ``headers``/``libraries``
    (name -> path) from the wheels. Jittor takes the toolkit folder from nvcc's real path,
    so the script (not a link) makes ``root`` that folder."""
    key = hashlib.sha1(repr((nvcc, home, sorted(headers.items()),
                             sorted(libraries.items()))).encode()).hexdigest()[:12]
    folder = os.path.join(root, "toolkit-" + key)
    for sub in ("bin", "include", "lib64"):
        os.makedirs(os.path.join(folder, sub), exist_ok=True)
    for sub, extra in (("include", headers), ("lib64", libraries)):
        own = os.path.join(home, sub)
        entries = {n: os.path.join(own, n) for n in (os.listdir(own) if os.path.isdir(own) else ())}
        entries.update(extra)
        for name, target in entries.items():
            _link(target, os.path.join(folder, sub, name))
    script = os.path.join(folder, "bin", "nvcc")
    if not os.path.isfile(script):
        tmp = f"{script}.tmp{os.getpid()}"
        with open(tmp, "w") as f:
            f.write(f'#!/bin/sh\nexec "{nvcc}" "$@"\n')
        os.chmod(tmp, 0o755)
        os.replace(tmp, script)
    return script


def _wheel_nccl(shim_root, site_dirs):
    """(include, lib) of the NCCL of a PyTorch ``nvidia-nccl`` wheel, with the unversioned
    ``libnccl.so`` Jittor opens made as a link in ``shim_root``; None when there is none."""
    header = _wheel_file(site_dirs, "include", "nccl.h")
    lib = header and next(iter(sorted(glob.glob(os.path.join(
        os.path.dirname(os.path.dirname(header)), "lib", "libnccl.so*")))), None)
    if not lib:
        return None
    lib_dir = os.path.join(shim_root, "nccl", "lib")
    os.makedirs(lib_dir, exist_ok=True)
    _link(lib, os.path.join(lib_dir, "libnccl.so"))
    return os.path.dirname(header), lib_dir


# Headers and libraries Jittor needs besides the CUDA runtime (compile_extern.setup_cuda_extern;
# libcublasLt is opened for cuBLAS).
_LIBRARIES = {"cublas": ("cublas.h", ("libcublas.so", "libcublasLt.so")),
              "curand": ("curand.h", ("libcurand.so",))}


def _toolkit_home(nvcc):
    """The folder Jittor derives from ``nvcc`` (its real path's parent)."""
    return os.path.dirname(os.path.dirname(os.path.realpath(nvcc)))


def _runtime_problems(nvcc):
    home = _toolkit_home(nvcc)
    problems = []
    if _find(_include_dirs(home), "cuda_runtime.h") is None:
        problems.append(f"CUDA headers: no cuda_runtime.h under {home}/include (Jittor takes the "
                        f"toolkit folder from nvcc's real path {os.path.realpath(nvcc)})")
    if not os.path.isfile(os.path.join(_lib_dirs(home, nvcc)[1], "libcudart.so")):
        problems.append(f"CUDA runtime: no {_lib_dirs(home, nvcc)[1]}/libcudart.so")
    return problems


def inspect(env=None, cache_root=None, site_dirs=None):
    """What Jittor would find: dict with ``nvcc`` (the one Jittor will run), ``version``,
    ``missing`` (one-line problems; empty when CUDA is usable), ``cudnn`` (description),
    ``from_wheels`` (pieces taken from PyTorch's ``nvidia-*`` wheels) and ``env`` (the
    variables :func:`configure` sets). Pieces the toolkit lacks (cuBLAS, cuRAND) are taken
    from the wheels through a merged toolkit folder under ``cache_root``."""
    env = os.environ if env is None else env
    site_dirs = _site_package_dirs() if site_dirs is None else site_dirs
    res = {"nvcc": None, "version": None, "missing": [], "cudnn": "not checked",
           "from_wheels": [], "env": {}}
    nvcc = find_nvcc(env)
    if nvcc is None:
        res["missing"].append("nvcc not found (looked at $nvcc_path, $CUDA_HOME/bin, the PATH, "
                              "/usr/local/cuda/bin, /opt/cuda/bin): set CUDA_HOME to the CUDA "
                              "toolkit folder")
        return res
    res["nvcc"] = nvcc
    res["version"] = nvcc_version(nvcc)
    if res["version"] is None:
        res["missing"].append(f"{nvcc} --version did not run")
        return res
    res["missing"] += _runtime_problems(nvcc)
    if res["missing"]:
        return res
    home = _toolkit_home(nvcc)
    incs, libs = _include_dirs(home), _lib_dirs(home, nvcc)
    headers, libraries = {}, {}
    for lib, (header, names) in _LIBRARIES.items():
        if _find(incs, header) is None:
            found = _wheel_file(site_dirs, "include", header)
            if found is None:
                res["missing"].append(f"{header} neither in {', '.join(incs)} nor in a "
                                      f"PyTorch nvidia-{lib} wheel")
            else:
                for h in glob.glob(os.path.join(os.path.dirname(found), lib + "*.h")):
                    headers[os.path.basename(h)] = h
        for name in names:
            if _find(libs, name) is None:
                found = _wheel_file(site_dirs, "lib", name + "*")
                if found is None:
                    res["missing"].append(f"{name} neither in {', '.join(libs)} nor in a "
                                          f"PyTorch nvidia-{lib} wheel")
                else:
                    libraries[name] = found
    if res["missing"]:
        return res
    out = res["env"]
    if headers or libraries:
        if cache_root is None:
            res["missing"].append("cuBLAS/cuRAND come from wheels but no cache folder was given")
            return res
        res["from_wheels"] = sorted(headers) + sorted(libraries.values())
        try:
            nvcc = _merged_toolkit(os.path.join(cache_root, "dformer_cuda"), nvcc, home,
                                   headers, libraries)
        except OSError as exc:
            res["missing"].append(f"cannot write the merged toolkit folder: {exc}")
            return res
        res["nvcc"] = nvcc
        libs = _lib_dirs(_toolkit_home(nvcc), nvcc)
        incs = _include_dirs(_toolkit_home(nvcc))
    header = _find(incs, "cudnn.h")
    major = _cudnn_major(os.path.dirname(header)) if header else None
    split = ("libcudnn.so", "libcudnn_ops_infer.so", "libcudnn_ops_train.so",
             "libcudnn_cnn_infer.so", "libcudnn_cnn_train.so")
    if env.get("conv_opt", "0") not in ("", "0"):
        res["cudnn"] = "off (conv_opt set)"
    elif major == 8 and all(_find(libs, n) or _find(libs, n + ".8") for n in split):
        res["cudnn"] = f"cuDNN 8 ({os.path.dirname(header)})"
    else:
        found = f"cuDNN {major} headers at {os.path.dirname(header)}" if header else "no cudnn.h"
        res["cudnn"] = (f"not used ({found}; Jittor 1.3.11 needs cuDNN 8): convolutions "
                        "run as Jittor's own CUDA kernels")
        out["conv_opt"] = "1"
    out["nvcc_path"] = nvcc
    out["use_cutt"] = env.get("use_cutt", "0")
    out["use_cutlass"] = env.get("use_cutlass", "0")
    if not (env.get("nccl_include_path") and env.get("nccl_lib_path")) and \
            env.get("use_nccl", "1") != "0":
        try:
            nccl = _wheel_nccl(os.path.join(cache_root, "dformer_cuda"), site_dirs) \
                if cache_root else None
        except OSError:
            nccl = None
        if nccl:
            out["nccl_include_path"], out["nccl_lib_path"] = nccl
        else:
            out["use_nccl"] = "0"
    return res


_LOCAL_RANK_VARS = ("OMPI_COMM_WORLD_LOCAL_RANK", "MPI_LOCALRANKID", "MV2_COMM_WORLD_LOCAL_RANK",
                    "SLURM_LOCALID")


def _bind_mpi_rank_without_nccl():
    """One GPU per MPI process when NCCL is off. Jittor selects a rank's GPU only while
    setting up NCCL (``cudaSetDevice(local rank)``); without it every rank would run on GPU 0.
    ``CUDA_VISIBLE_DEVICES`` set by the user or the launcher is kept."""
    if os.environ.get("use_nccl") != "0" or "CUDA_VISIBLE_DEVICES" in os.environ:
        return
    rank = next((os.environ[v] for v in _LOCAL_RANK_VARS if os.environ.get(v, "").isdigit()),
                None)
    if rank is not None:
        os.environ["CUDA_VISIBLE_DEVICES"] = rank


def configure(has_driver, cache_root):
    """Set Jittor's CUDA variables in ``os.environ`` (before ``import jittor``); ``cache_root``
    is Jittor's cache folder (for the NCCL library link)."""
    global STATUS, USABLE
    USABLE = False
    if os.environ.get("DFORMER_CUDA", "1") == "0":
        os.environ["nvcc_path"] = ""
        STATUS = "hidden (DFORMER_CUDA=0)"
        return
    if "nvcc_path" in os.environ and not os.environ["nvcc_path"]:
        STATUS = "hidden (nvcc_path is empty)"
        return
    if not has_driver:
        os.environ["nvcc_path"] = ""
        STATUS = "no CUDA driver"
        return
    res = inspect(cache_root=cache_root)
    if res["missing"]:
        os.environ["nvcc_path"] = ""   # never let Jittor download a toolkit
        STATUS = "driver found, toolkit unusable: " + "; ".join(res["missing"])
        return
    for key, value in res["env"].items():
        os.environ.setdefault(key, value)
    _bind_mpi_rank_without_nccl()
    USABLE = True
    major, minor = res["version"]
    STATUS = f"nvcc {major}.{minor} at {res['nvcc']}, cuDNN: {res['cudnn']}"
