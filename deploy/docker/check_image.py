#!/usr/bin/env python3
"""Build-time checks of a serving image's Python environment: the build fails on any problem, one line each.

    python check_image.py          # CPU image: kafka-python reads every codec, no torch
    python check_image.py --gpu    # GPU image: also onnxruntime-gpu's CUDA provider can load here

The GPU check is what ``'CUDAExecutionProvider' in get_available_providers()`` is not: that list says what
the wheel was built with, even when none of the CUDA libraries it links are in the image. Here the CUDA
provider library is resolved with ``ldd`` (every ``not found`` fails, except the driver's ``libcuda.so.1``,
which the NVIDIA container runtime mounts from the host), the libraries onnxruntime opens later (cuDNN,
cuFFT, NVRTC: the wheel's ``[cuda]``/``[cudnn]`` extras name them) are loaded with ``dlopen``, and the CUDA
major the wheel needs must be the base image's (``CUDA_VERSION``, set by the nvidia/cuda images).

The tests run the same functions on the development machine.
"""

from __future__ import annotations

import argparse
import ctypes
import importlib
import os
import re
import subprocess
import sys
from importlib import metadata
from pathlib import Path

TORCH_FAMILY = ("torch", "torchvision", "torchaudio", "open-clip-torch", "triton")
# kafka-python's codecs: what it imports for each (kafka.codec) and how to ask whether it can.
CODECS = ("gzip", "snappy", "lz4", "zstd")
# The host's driver, mounted at run time by the NVIDIA container runtime: never in an image.
DRIVER_LIBRARIES = ("libcuda.so.1",)
# pip distribution (onnxruntime-gpu's extras) -> the shared library it ships, by its major version.
SONAME_OF = {
    "nvidia-cuda-runtime": "libcudart.so.{major}",
    "nvidia-cuda-nvrtc": "libnvrtc.so.{major}",
    "nvidia-cufft": "libcufft.so.{major}",
    "nvidia-curand": "libcurand.so.{major}",
    "nvidia-cublas": "libcublas.so.{major}",
    "nvidia-cudnn": "libcudnn.so.{major}",
}
CUDA_PROVIDER = "libonnxruntime_providers_cuda.so"


def torch_problems() -> list[str]:
    """The serving images never hold torch (the serving half of dangerclip does not import it)."""
    found = []
    for name in TORCH_FAMILY:
        try:
            found.append(f"{name}=={metadata.version(name)}")
        except metadata.PackageNotFoundError:
            continue
    return [f"torch leaked into the serving image: {', '.join(found)}"] if found else []


def codec_problems() -> list[str]:
    """kafka-python must decompress whatever a producer used: a batch it cannot decode stalls the partition."""
    codec = importlib.import_module("kafka.codec")
    return [
        f"kafka-python cannot read {name}-compressed batches (kafka.codec.has_{name}() is False)"
        for name in CODECS
        if not getattr(codec, f"has_{name}")()
    ]


def cuda_requirements(requires: list[str]) -> tuple[int | None, dict[str, str]]:
    """From onnxruntime-gpu's ``Requires-Dist`` lines: the CUDA major it is built for and the libraries of
    its ``cuda``/``cudnn`` extras, ``{distribution: soname}``.

    ``nvidia-cuda-runtime~=13.0; extra == "cuda"`` means CUDA 13 and ``libcudart.so.13``;
    ``nvidia-cudnn-cu13~=9.0`` means ``libcudnn.so.9``.
    """
    cuda_major: int | None = None
    libs: dict[str, str] = {}
    for line in requires:
        m = re.match(r"\s*(nvidia-[a-z0-9-]+?)(?:-cu(\d+))?\s*(?:~=|==|>=)\s*(\d+)", line)
        if not m or "extra ==" not in line:
            continue
        dist, cu, major = m.group(1), m.group(2), int(m.group(3))
        if dist == "nvidia-cuda-runtime":
            cuda_major = major
        elif cu and cuda_major is None:
            cuda_major = int(cu)
        if dist in SONAME_OF:
            libs[dist + (f"-cu{cu}" if cu else "")] = SONAME_OF[dist].format(major=major)
    return cuda_major, libs


def unresolved(ldd_output: str) -> list[str]:
    """Sonames ``ldd`` could not find, the driver's excepted."""
    missing = [line.split("=>")[0].strip() for line in ldd_output.splitlines() if "not found" in line]
    return [name for name in missing if name not in DRIVER_LIBRARIES]


def gpu_problems() -> list[str]:
    """Whether onnxruntime's CUDA provider can load in this image, and was built for its CUDA."""
    try:
        import onnxruntime as ort
    except ImportError as e:
        return [f"onnxruntime does not import: {e}"]
    if "CUDAExecutionProvider" not in ort.get_available_providers():
        return [f"onnxruntime {ort.__version__} has no CUDAExecutionProvider: not the GPU build (onnxruntime-gpu)"]
    problems: list[str] = []
    provider = Path(ort.__file__).parent / "capi" / CUDA_PROVIDER
    if not provider.exists():
        return [f"{provider} is missing"]
    out = subprocess.run(["ldd", str(provider)], capture_output=True, text=True, check=False).stdout
    problems += [f"{CUDA_PROVIDER} needs {name}, which is not in this image" for name in unresolved(out)]
    try:
        requires = metadata.requires("onnxruntime-gpu") or []
    except metadata.PackageNotFoundError:
        requires = []
    cuda_major, libs = cuda_requirements(requires)
    image_cuda = os.environ.get("CUDA_VERSION", "")
    if cuda_major is None:
        problems.append("cannot tell which CUDA onnxruntime-gpu is built for (no nvidia-cuda-runtime extra)")
    elif image_cuda.split(".")[0] != str(cuda_major):
        problems.append(
            f"onnxruntime-gpu {ort.__version__} is built for CUDA {cuda_major}, "
            f"the base image has CUDA {image_cuda or '(none: CUDA_VERSION unset)'}"
        )
    for dist, soname in sorted(libs.items()):
        try:
            ctypes.CDLL(soname)
        except OSError as e:
            problems.append(f"onnxruntime-gpu loads {soname} ({dist}) at run time; it does not load here: {e}")
    return problems


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--gpu", action="store_true", help="also check onnxruntime-gpu's CUDA provider")
    args = parser.parse_args(argv)
    problems = torch_problems() + codec_problems() + (gpu_problems() if args.gpu else [])
    for p in problems:
        sys.stderr.write(f"check_image: {p}\n")
    if not problems:
        sys.stdout.write("check_image: ok\n")
    return 1 if problems else 0


if __name__ == "__main__":
    sys.exit(main())
