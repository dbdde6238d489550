"""utils/cuda_toolkit.py on a toolkit laid out like the GPU machines': nvcc and the CUDA
runtime in /usr/local/cuda, cuBLAS/cuRAND/cuDNN 9/NCCL only in PyTorch's nvidia-* wheels.
The files are empty stand-ins (only their names and places matter to Jittor's search)."""
import os
import subprocess

import pytest

from utils import cuda_toolkit


def _touch(path, text=""):
    os.makedirs(os.path.dirname(path), exist_ok=True)
    with open(path, "w") as f:
        f.write(text)


@pytest.fixture
def machine(tmp_path, monkeypatch):
    monkeypatch.setattr(cuda_toolkit, "_STANDARD_NVCC", ())   # not this machine's toolkit
    cuda = tmp_path / "cuda-13.0"
    _touch(str(cuda / "bin" / "nvcc"), "#!/bin/sh\necho 'Cuda compilation tools, release 13.0, "
                                       "V13.0.88'\n")
    os.chmod(cuda / "bin" / "nvcc", 0o755)
    _touch(str(cuda / "include" / "cuda_runtime.h"))
    _touch(str(cuda / "lib64" / "libcudart.so"))
    site = tmp_path / "site-packages"
    wheel = site / "nvidia" / "cu13"
    for name in ("cublas.h", "cublas_v2.h", "cublasLt.h", "curand.h", "curand_kernel.h"):
        _touch(str(wheel / "include" / name))
    for name in ("libcublas.so.13", "libcublasLt.so.13", "libcurand.so.10"):
        _touch(str(wheel / "lib" / name))
    _touch(str(site / "nvidia" / "cudnn" / "include" / "cudnn_version.h"),
           "#define CUDNN_MAJOR 9\n")
    _touch(str(site / "nvidia" / "nccl" / "include" / "nccl.h"))
    _touch(str(site / "nvidia" / "nccl" / "lib" / "libnccl.so.2"))
    env = {"CUDA_HOME": str(cuda), "PATH": ""}
    saved = dict(os.environ)    # configure() sets variables monkeypatch does not know of
    yield env, str(tmp_path / "cache"), [str(site)], cuda, wheel
    os.environ.clear()
    os.environ.update(saved)


def test_wheels_complete_the_toolkit_in_a_folder_jittor_reads(machine):
    env, cache, sites, cuda, wheel = machine
    res = cuda_toolkit.inspect(env, cache, sites)
    assert res["missing"] == []
    assert res["version"] == (13, 0)
    nvcc = res["nvcc"]
    assert res["env"]["nvcc_path"] == nvcc and nvcc.startswith(cache)
    # Jittor derives the toolkit from nvcc's real path: the merged folder, not the wheel's
    home = os.path.dirname(os.path.dirname(os.path.realpath(nvcc)))
    assert os.path.realpath(os.path.join(home, "include", "cuda_runtime.h")) == \
        os.path.realpath(cuda / "include" / "cuda_runtime.h")
    assert os.path.realpath(os.path.join(home, "include", "cublas_v2.h")) == \
        os.path.realpath(wheel / "include" / "cublas_v2.h")
    for name, target in (("libcudart.so", cuda / "lib64" / "libcudart.so"),
                         ("libcublas.so", wheel / "lib" / "libcublas.so.13"),
                         ("libcublasLt.so", wheel / "lib" / "libcublasLt.so.13"),
                         ("libcurand.so", wheel / "lib" / "libcurand.so.10")):
        assert os.path.realpath(os.path.join(home, "lib64", name)) == os.path.realpath(target)
    # the merged nvcc runs the real one
    out = subprocess.run([nvcc, "--version"], capture_output=True, text=True).stdout
    assert "release 13.0" in out
    # nothing Jittor would download: cuDNN 9 is not usable by Jittor 1.3.11, cutt/CUTLASS off,
    # NCCL from its wheel through an unversioned link
    assert res["env"]["conv_opt"] == "1" and "needs cuDNN 8" in res["cudnn"]
    assert res["env"]["use_cutt"] == "0" and res["env"]["use_cutlass"] == "0"
    lib = os.path.join(res["env"]["nccl_lib_path"], "libnccl.so")
    assert os.path.realpath(lib) == os.path.realpath(
        os.path.join(sites[0], "nvidia", "nccl", "lib", "libnccl.so.2"))
    # the same answer a second time (the folder is reused, not rebuilt)
    assert cuda_toolkit.inspect(env, cache, sites)["nvcc"] == nvcc


def test_each_missing_piece_is_named(machine):
    env, cache, sites, cuda, wheel = machine
    os.unlink(wheel / "include" / "curand.h")
    os.unlink(wheel / "lib" / "libcurand.so.10")
    res = cuda_toolkit.inspect(env, cache, sites)
    assert len(res["missing"]) == 2
    assert "curand.h" in res["missing"][0] and "libcurand.so" in res["missing"][1]
    assert res["env"] == {}
    os.unlink(cuda / "lib64" / "libcudart.so")
    res = cuda_toolkit.inspect(env, cache, sites)
    assert res["missing"] == [f"CUDA runtime: no {cuda}/lib64/libcudart.so"]
    res = cuda_toolkit.inspect({"PATH": ""}, cache, sites)
    assert res["nvcc"] is None and res["missing"][0].startswith("nvcc not found")


def test_configure_never_leaves_jittor_a_download(machine, monkeypatch):
    env, cache, sites, cuda, wheel = machine
    for key in ("nvcc_path", "conv_opt", "use_cutt", "use_cutlass", "use_nccl", "DFORMER_CUDA",
                "nccl_include_path", "nccl_lib_path"):
        monkeypatch.delenv(key, raising=False)
    monkeypatch.setenv("CUDA_HOME", env["CUDA_HOME"])
    monkeypatch.setenv("PATH", "")
    monkeypatch.setattr(cuda_toolkit, "_site_package_dirs", lambda: sites)
    cuda_toolkit.configure(True, cache)
    assert cuda_toolkit.USABLE and os.environ["nvcc_path"].startswith(cache)
    assert cuda_toolkit.STATUS.startswith("nvcc 13.0 at ")
    # a driver but an incomplete toolkit: CUDA hidden (CPU), the reason kept for the error
    monkeypatch.delenv("nvcc_path")
    os.unlink(cuda / "include" / "cuda_runtime.h")
    cuda_toolkit.configure(True, cache)
    assert os.environ["nvcc_path"] == "" and not cuda_toolkit.USABLE
    assert cuda_toolkit.STATUS.startswith("driver found, toolkit unusable: CUDA headers")
    monkeypatch.delenv("nvcc_path")
    cuda_toolkit.configure(False, cache)
    assert os.environ["nvcc_path"] == "" and cuda_toolkit.STATUS == "no CUDA driver"


def test_mpi_ranks_get_their_own_gpu_without_nccl(machine, monkeypatch):
    env, cache, sites, cuda, wheel = machine
    for key in ("nvcc_path", "use_nccl", "nccl_include_path", "nccl_lib_path",
                "CUDA_VISIBLE_DEVICES", "DFORMER_CUDA"):
        monkeypatch.delenv(key, raising=False)
    monkeypatch.setenv("CUDA_HOME", env["CUDA_HOME"])
    monkeypatch.setenv("PATH", "")
    monkeypatch.setenv("OMPI_COMM_WORLD_LOCAL_RANK", "1")
    monkeypatch.setattr(cuda_toolkit, "_site_package_dirs", lambda: sites)
    # NCCL from the wheel: Jittor's NCCL set-up picks the GPU, nothing to do
    cuda_toolkit.configure(True, cache)
    assert cuda_toolkit.USABLE and "CUDA_VISIBLE_DEVICES" not in os.environ
    # no NCCL anywhere: the rank's GPU through CUDA_VISIBLE_DEVICES
    for key in ("nvcc_path", "use_nccl", "nccl_include_path", "nccl_lib_path"):
        monkeypatch.delenv(key, raising=False)
    for name in os.listdir(os.path.join(sites[0], "nvidia", "nccl", "lib")):
        os.unlink(os.path.join(sites[0], "nvidia", "nccl", "lib", name))
    cuda_toolkit.configure(True, cache)
    assert os.environ["use_nccl"] == "0" and os.environ["CUDA_VISIBLE_DEVICES"] == "1"
