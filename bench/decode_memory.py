"""Benchmark: peak memory of decoding one worst-case image, old decoder vs new, one run.

    python bench/decode_memory.py                # every worst case at 40 MP, old (commit 6af608e) vs new (~2 min)
    python bench/decode_memory.py --quick        # three of them
    python bench/decode_memory.py --fidelity photo1.jpg photo2.jpg    # what min_side changes in the model input

For each worst case at ``--pixels`` (the default ``max_pixels``, 40 MP as 8000 x 5000) the image is generated
here, cheap and compressible like a decompression bomb: 16-bit greyscale PNG, 16-bit and 8-bit RGBA PNG,
progressive and baseline JPEG (4:4:4), lossy WebP and lossless RGBA WebP, GIF, RLE8 BMP and float32 TIFF. Each
is decoded and preprocessed (``decode_image`` + ``preprocess`` to 224 x 224) once in a fresh ``python``, which
reports its peak RSS (``VmHWM``, reset through ``/proc/self/clear_refs`` once the imports are done, the file is
in memory and a small image of the same format has been through) above its RSS at that point. Three paths: the
OLD decoder (``dangerclip/runtime/preprocess.py`` at ``--old-ref``, from ``git show``), the NEW one at full size, and
the NEW one with ``min_side`` (what the service passes: 2x the model's input). Then two decode threads: the worst
image twice at once, and every case twice in a mixed stream, without and with a ``PixelBudget``.

Measured on the 2-core development machine (Pillow 13.0, numpy 2.4, glibc malloc), 40 MP, MB = 10^6 bytes:

    image             file kB mode   old MB  new MB min_side MB old/new old/min_side
    png16-grey            104 I;16     1041     255          87     4.1         11.9
    png16-rgba            384 RGBA      800     345         181     2.3          4.4
    png8-rgba             185 RGBA      800     345         181     2.3          4.4
    jpeg-progressive     1040 RGB       400     400         243     1.0          1.7
    jpeg-baseline        1508 RGB       320     168           4     1.9         84.3
    webp-lossy            168 RGB       640     640         640     1.0          1.0
    webp-lossless        4290 RGBA      809     649         648     1.2          1.2
    gif                   396 L         200     209          41     1.0          4.8
    bmp-rle8              331 P         200     210         121     1.0          1.7
    tiff-float32          244 F         801     346         181     2.3          4.4

    two decode threads, min_side 448       webp-lossless x2 at once   every case twice, mixed (RSS after)
      no budget                                  1295                       1053 (124)
      PixelBudget(40 MP)                          657                        832 (185)
      PixelBudget(40 MP), MALLOC_ARENA_MAX=2      655                        756 (1)
      PixelBudget(80 MP)                         1217                       1080 (247)

Where the memory goes. The old decoder converted through full-size float64 (16-bit and float images: 1 GB) and
full-size RGBA and white-background copies (RGBA: 0.8 GB). The new one converts a tile of ~1 M pixels at a time,
so with ``min_side`` the cost is the decoded image in its own mode plus the decoder's own buffers: 2 bytes a
header pixel for 16-bit grey, 4 for RGBA and float32 (Pillow keeps 8-bit RGB at 4 bytes a pixel too), 1 for
palette and grey, 3 for Pillow's RLE BMP decoder (pure Python), 6 for progressive JPEG (libjpeg keeps every DCT
coefficient, whatever the scale it draws at), and 16 for WebP: Pillow decodes every WebP through libwebp's
animation decoder, which holds two full-size canvases, then copies the frame to a bytes object and that into the
image. Nothing here can shrink that short of another WebP binding. Baseline JPEG, the common upload, is drawn at
1/8 scale by libjpeg itself and costs nearly nothing. At full size (``min_side=None``, training) add the 4-byte
RGB result.

Budget. ``PixelBudget`` counts header pixels, so what it lets through costs at most 16.2 bytes a pixel (WebP)
x 1.28 (allocator slack: the mixed stream under a 40 MP budget peaks at 832 MB although only one 40 MP image is
in flight at a time; glibc keeps freed blocks in per-thread arenas, and ``MALLOC_ARENA_MAX=2`` brings that to
1.17 and gives the memory back when idle). A worker is the model process (~400 MB: interpreter, onnxruntime,
batches) + buffered input (``max_buffered_bytes``, 134 MB) + decodes; keeping that inside 90 % of the limit:

    2 GiB: 1090 MB for decodes -> decode_budget_pixels <= 67 MP: use 64 MP
    3 GiB: 1843 MB for decodes -> decode_budget_pixels <= 114 MP: 80 MP (two 40 MP images at once) fits easily

``max_pixels`` stays 40 MP. Memory is bounded by the budget, not by ``max_pixels``, as long as
``max_pixels <= budget``; at 40 MP under a 64 MP budget the second decode thread keeps decoding ordinary photos
(up to 24 MP) while a largest image decodes, and 40 MP is above every camera's default output. One 40 MP image
costs at most 0.65 GB decoded at full size (training, the pseudo-mask job), within any of these limits.
``recommend()`` prints these figures from the measurements of each run.

Fidelity (``--fidelity``) on 12 photographs of 1280 x 1024 to 2560 x 1920 and one 5640 x 3172 abstract picture
(Debian's ``mate-backgrounds``): what ``min_side=448`` changes in the model input, max / mean |difference| in
8-bit levels. As JPEG (drawn at 1/2 to 1/4 by libjpeg): 2-17 / 0.11-0.67; re-encoded as PNG (box-reduced 2x
to 4x): 1-5 / 0.17-0.26, the abstract picture (7x) 11 / 1.16. For scale, re-encoding the full image as JPEG quality 90:
2-9 / 0.06-0.64. In tensor units (per-channel normalised) the largest mean is 0.017.
"""

from __future__ import annotations

import argparse
import json
import os
import struct
import subprocess
import sys
import tempfile
import time
import zlib
from collections.abc import Callable
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]
MB = 1_000_000
CASES: dict[str, Callable[[Path, int, int], None]] = {}
QUICK = ("png16-grey", "png16-rgba", "jpeg-progressive")


def case(name: str) -> Callable[[Callable[[Path, int, int], None]], Callable[[Path, int, int], None]]:
    def register(fn: Callable[[Path, int, int], None]) -> Callable[[Path, int, int], None]:
        CASES[name] = fn
        return fn

    return register


# ----------------------------------------------------------------------------------------------- generators
def _png(path: Path, w: int, h: int, depth: int, colour_type: int) -> None:
    """A PNG written row by row (Pillow cannot write 16-bit RGBA): one patterned row, then rows filtered "Up"
    from it, all zeros, so the file is tiny and the decoded image full size."""
    channels = {0: 1, 2: 3, 4: 2, 6: 4}[colour_type]
    x = np.arange(w, dtype=np.int64)
    row = np.stack([(x * (37 + 11 * c)) % (1 << depth) for c in range(channels)], axis=1)
    if colour_type in (4, 6):  # alpha from transparent to opaque across the row: compositing has work to do
        row[:, -1] = x * ((1 << depth) - 1) // max(1, w - 1)
    raw = row.astype(">u2" if depth == 16 else np.uint8).tobytes()

    def chunk(tag: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + tag + data + struct.pack(">I", zlib.crc32(tag + data))

    z = zlib.compressobj(9)
    parts = [z.compress(b"\x00" + raw)]
    up = b"\x02" + bytes(len(raw))
    parts += [z.compress(up) for _ in range(h - 1)]
    parts.append(z.flush())
    ihdr = struct.pack(">IIBBBBB", w, h, depth, colour_type, 0, 0, 0)
    path.write_bytes(
        b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", b"".join(parts)) + chunk(b"IEND", b"")
    )


def _rgb(w: int, h: int):  # noqa: ANN202 - PIL imported lazily
    from PIL import Image

    g = Image.linear_gradient("L").resize((w, h))
    r = Image.radial_gradient("L").resize((w, h))
    return Image.merge("RGB", (g, r, g.transpose(Image.Transpose.FLIP_LEFT_RIGHT)))


@case("png16-grey")
def _png16_grey(path: Path, w: int, h: int) -> None:
    _png(path, w, h, 16, 0)


@case("png16-rgba")
def _png16_rgba(path: Path, w: int, h: int) -> None:
    _png(path, w, h, 16, 6)


@case("png8-rgba")
def _png8_rgba(path: Path, w: int, h: int) -> None:
    _png(path, w, h, 8, 6)


@case("jpeg-progressive")
def _jpeg_progressive(path: Path, w: int, h: int) -> None:
    _rgb(w, h).save(path, "JPEG", quality=90, subsampling=0, progressive=True)


@case("jpeg-baseline")
def _jpeg_baseline(path: Path, w: int, h: int) -> None:
    _rgb(w, h).save(path, "JPEG", quality=90, subsampling=0)


@case("webp-lossy")
def _webp_lossy(path: Path, w: int, h: int) -> None:
    _rgb(w, h).save(path, "WEBP", quality=50, method=0)


@case("webp-lossless")
def _webp_lossless(path: Path, w: int, h: int) -> None:
    rgba = _rgb(w, h).convert("RGBA")
    rgba.putalpha(rgba.getchannel(1))
    rgba.save(path, "WEBP", lossless=True, quality=0, method=0)


@case("gif")
def _gif(path: Path, w: int, h: int) -> None:
    _rgb(w, h).getchannel(0).save(path, "GIF")


@case("bmp-rle8")
def _bmp_rle8(path: Path, w: int, h: int) -> None:
    """8-bit palette BMP, RLE8-compressed (Pillow writes only uncompressed BMP): runs of 255 pixels."""
    row = bytearray()
    for i, x in enumerate(range(0, w, 255)):
        row += bytes((min(255, w - x), (i * 8) % 256))
    row += b"\x00\x00"  # end of line
    pixels = bytes(row) * h + b"\x00\x01"  # end of bitmap
    palette = b"".join(bytes((i, 255 - i, i // 2, 0)) for i in range(256))
    offset = 14 + 40 + len(palette)
    info = struct.pack("<IiiHHIIiiII", 40, w, h, 1, 8, 1, len(pixels), 2835, 2835, 256, 0)
    path.write_bytes(b"BM" + struct.pack("<IHHI", offset + len(pixels), 0, 0, offset) + info + palette + pixels)


@case("tiff-float32")
def _tiff_float32(path: Path, w: int, h: int) -> None:
    from PIL import Image

    a = np.asarray(_rgb(w, h).getchannel(0), dtype=np.float32)
    Image.fromarray(a).save(path, "TIFF", compression="tiff_adobe_deflate")


# ----------------------------------------------------------------------------------------------- measurement
def _status_kb(field: str) -> int:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1])
    raise KeyError(field)


def _reset_peak() -> bool:
    """Reset VmHWM to the current RSS (Linux >= 4.0); False where that is not allowed."""
    try:
        Path("/proc/self/clear_refs").write_text("5")
        return True
    except OSError:
        return False


def child(args: argparse.Namespace) -> int:
    """In a fresh process: import, read the files, reset the peak, decode + preprocess each once (``--threads``
    threads taking files from one queue, as the worker's decode pool does), report the peak above the start."""
    import gc
    import importlib.util
    import io
    import queue
    import threading

    sys.path.insert(0, str(REPO))
    from PIL import Image

    from dangerclip.runtime.card import PreprocessConfig

    if args.impl == "old":
        spec = importlib.util.spec_from_file_location("preprocess_old", args.old_module)
        assert spec is not None and spec.loader is not None
        mod = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(mod)
    else:
        import dangerclip.runtime.preprocess as mod
    cfg = PreprocessConfig()
    kw: dict[str, object] = {"max_pixels": args.max_pixels}
    if args.child_min_side:
        kw["min_side"] = args.child_min_side
    files = [Path(f).read_bytes() for f in args.child]
    # Warm up on small images of the same formats: plugins, codecs and lookup tables belong to the baseline.
    for f in dict.fromkeys(args.child):
        with Image.open(f) as im:
            fmt = im.format
        b = io.BytesIO()
        Image.new("RGB", (64, 64)).save(b, fmt)
        mod.preprocess(mod.decode_image(b.getvalue(), **kw), cfg)
    if args.budget:
        from service.budget import PixelBudget

        kw["reserve"] = PixelBudget(args.budget).reserve
    todo: queue.SimpleQueue[bytes] = queue.SimpleQueue()
    for data in files:
        todo.put(data)
    errors: list[str] = []

    def work() -> None:
        while True:
            try:
                data = todo.get_nowait()
            except queue.Empty:
                return
            try:
                x = mod.preprocess(mod.decode_image(data, **kw), cfg)
                assert x.shape == (3, cfg.image_size, cfg.image_size)
            except Exception as e:  # noqa: BLE001 - reported, not hidden
                errors.append(f"{type(e).__name__}: {e}")

    gc.collect()
    reset = _reset_peak()
    base = _status_kb("VmRSS")
    t0 = time.perf_counter()
    threads = [threading.Thread(target=work) for _ in range(args.threads)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    seconds = time.perf_counter() - t0
    peak, end = _status_kb("VmHWM"), _status_kb("VmRSS")
    if errors:
        print(errors[0], file=sys.stderr)
        return 1
    print(
        json.dumps(
            {
                "peak_mb": (peak - base) * 1024 / MB,
                "end_mb": (end - base) * 1024 / MB,
                "seconds": seconds,
                "reset": reset,
            }
        )
    )
    return 0


def measure(
    paths: list[Path],
    impl: str,
    old_module: Path,
    max_pixels: int,
    min_side: int | None,
    threads: int = 1,
    budget: int | None = None,
    env: dict[str, str] | None = None,
) -> dict[str, float]:
    """Run ``child`` in a fresh interpreter; its report, or ``{"error": ...}``."""
    cmd = [
        sys.executable,
        __file__,
        "--child",
        *map(str, paths),
        "--impl",
        impl,
        "--old-module",
        str(old_module),
        "--max-pixels",
        str(max_pixels),
        "--threads",
        str(threads),
    ]
    if min_side:
        cmd += ["--child-min-side", str(min_side)]
    if budget:
        cmd += ["--budget", str(budget)]
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(REPO), **(env or {})}
    r = subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=300)
    if r.returncode != 0:
        return {"error": (r.stderr.strip().splitlines() or ["?"])[-1]}  # type: ignore[dict-item]
    return json.loads(r.stdout.strip().splitlines()[-1])


def fidelity(paths: list[Path], min_side: int) -> None:
    """How much decoding at reduced scale changes the model input: |preprocess(reduced) - preprocess(full)|.

    Each file as it is (JPEG: libjpeg's DCT scaling) and re-encoded losslessly as PNG (box reduction); for scale,
    the change that re-encoding the full image as JPEG quality 90 makes. In tensor units (what the model sees,
    per-channel normalised) and in 8-bit levels.
    """
    import io

    sys.path.insert(0, str(REPO))
    from dangerclip.runtime.card import PreprocessConfig
    from dangerclip.runtime.preprocess import decode_image, preprocess

    cfg = PreprocessConfig()
    levels = np.asarray(cfg.std, np.float32)[:, None, None] * 255

    def delta(a: np.ndarray, b: np.ndarray) -> str:
        d = np.abs(a - b)
        return f"{d.max():5.3f} {d.mean():6.4f} {(d * levels).max():5.1f} {(d * levels).mean():5.2f}"

    print(
        f"\nreduced (min_side={min_side}) vs full decode after preprocess: max |d|, mean |d| in tensor units, "
        f"then in 8-bit levels"
    )
    print(
        f"{'image':<26} {'size':>11} {'as file (draft for JPEG)':>32} {'as PNG (box reduce)':>28} "
        f"{'full, JPEG q90 (for scale)':>28}"
    )
    for path in paths:
        data = path.read_bytes()
        full = decode_image(data)
        ref = preprocess(full, cfg)
        buf = io.BytesIO()
        full.save(buf, "PNG", compress_level=1)
        png = buf.getvalue()
        buf = io.BytesIO()
        full.save(buf, "JPEG", quality=90)
        q90 = preprocess(decode_image(buf.getvalue()), cfg)
        as_file = preprocess(decode_image(data, min_side=min_side), cfg)
        as_png = preprocess(decode_image(png, min_side=min_side), cfg)
        size = f"{full.width}x{full.height}"
        print(
            f"{path.name[:26]:<26} {size:>11} {delta(ref, as_file):>32} {delta(ref, as_png):>28} {delta(ref, q90):>28}"
        )


def recommend(worst_per_px: float, pixels: int, model_mb: float, buffered_mb: float, slack: float) -> str:
    """The decode budget that keeps a worker inside 90 % of each memory limit, from the measured worst case."""
    lines = [
        f"worst case with min_side: {worst_per_px:.1f} bytes per header pixel "
        f"({worst_per_px * pixels / MB:.0f} MB for one {pixels / 1e6:.0f} MP image); allocator slack "
        f"x{slack:.2f}; model process {model_mb:.0f} MB, buffered input {buffered_mb:.0f} MB"
    ]
    for limit_gib in (2, 3):
        limit_mb = limit_gib * 1024**3 / MB
        # Model process and buffered input first, then the decodes with the allocator's slack, inside 90 %.
        room = (0.9 * limit_mb - model_mb - buffered_mb) / slack
        budget = room * MB / worst_per_px
        lines.append(f"  {limit_gib} GiB: {room:.0f} MB for decodes -> decode_budget_pixels <= {budget / 1e6:.0f} MP")
    return "\n".join(lines)


def _mb(m: dict[str, float], key: str = "peak_mb") -> str:
    return f"{m[key]:.0f}" if key in m else "err"


def _ratio(a: dict[str, float], b: dict[str, float]) -> str:
    ok = "peak_mb" in a and "peak_mb" in b and b["peak_mb"] > 0
    return f"{a['peak_mb'] / b['peak_mb']:.1f}" if ok else "-"


def _sec(m: dict[str, float]) -> str:
    return f"{m['seconds']:.2f}" if "seconds" in m else "-"


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--pixels", type=int, default=40_000_000, help="header pixels of each worst case")
    p.add_argument("--min-side", type=int, default=448, help="what the service passes: 2x the model input")
    p.add_argument("--old-ref", default="6af608e", help="git revision of the old decoder")
    p.add_argument("--quick", action="store_true", help=f"only {', '.join(QUICK)}")
    p.add_argument("--cases", nargs="*", choices=sorted(CASES), help="these worst cases only")
    p.add_argument("--model-mb", type=float, default=400, help="the worker's memory without decodes")
    p.add_argument("--buffered-mb", type=float, default=134, help="input held by the worker (max_buffered_bytes)")
    p.add_argument(
        "--fidelity",
        nargs="+",
        type=Path,
        metavar="IMAGE",
        help="instead: how much min_side changes the model input on these (real, large) images",
    )
    # Internal: one measurement in a fresh process.
    p.add_argument("--child", nargs="+", help=argparse.SUPPRESS)
    p.add_argument("--impl", choices=("old", "new"), help=argparse.SUPPRESS)
    p.add_argument("--old-module", help=argparse.SUPPRESS)
    p.add_argument("--max-pixels", type=int, default=40_000_000, help=argparse.SUPPRESS)
    p.add_argument("--child-min-side", type=int, default=0, help=argparse.SUPPRESS)
    p.add_argument("--threads", type=int, default=1, help=argparse.SUPPRESS)
    p.add_argument("--budget", type=int, default=0, help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    if args.child:
        return child(args)
    if args.fidelity:
        fidelity(args.fidelity, args.min_side)
        return 0

    from PIL import Image

    names = args.cases or (list(QUICK) if args.quick else list(CASES))
    w = int(round((args.pixels * 8 / 5) ** 0.5))
    h = args.pixels // w
    n = w * h
    t_start = time.perf_counter()
    with tempfile.TemporaryDirectory() as tmp_s:
        tmp = Path(tmp_s)
        old_module = tmp / "preprocess_old.py"
        src = subprocess.run(
            ["git", "-C", str(REPO), "show", f"{args.old_ref}:dangerclip/runtime/preprocess.py"],
            capture_output=True,
            text=True,
            check=True,
        ).stdout
        old_module.write_text(src)
        print(
            f"{w} x {h} = {n / 1e6:.1f} MP, min_side {args.min_side}, old = {args.old_ref}; "
            f"peak RSS above the baseline, MB = 10^6 bytes",
            flush=True,
        )
        print(
            f"{'image':<17} {'file kB':>7} {'mode':<5} {'old MB':>7} {'new MB':>7} {'min_side MB':>11} "
            f"{'old/new':>7} {'old/min_side':>12} {'old s':>6} {'new s':>6} {'min_side s':>10}"
        )
        rows: dict[str, dict[str, dict[str, float]]] = {}
        paths: dict[str, Path] = {}
        for name in names:
            path = paths[name] = tmp / name
            CASES[name](path, w, h)
            with Image.open(path) as im:
                mode = im.mode
            r = rows[name] = {
                "old": measure([path], "old", old_module, n, None),
                "new": measure([path], "new", old_module, n, None),
                "min_side": measure([path], "new", old_module, n, args.min_side),
            }
            print(
                f"{name:<17} {path.stat().st_size / 1000:>7.0f} {mode:<5} {_mb(r['old']):>7} {_mb(r['new']):>7} "
                f"{_mb(r['min_side']):>11} {_ratio(r['old'], r['new']):>7} {_ratio(r['old'], r['min_side']):>12} "
                f"{_sec(r['old']):>6} {_sec(r['new']):>6} {_sec(r['min_side']):>10}",
                flush=True,
            )
            for k, m in r.items():
                if "error" in m:
                    print(f"    {k}: {m['error']}")
        measured = {k: r["min_side"]["peak_mb"] for k, r in rows.items() if "peak_mb" in r["min_side"]}
        worst = max(measured, key=measured.__getitem__)
        print(f"\ntwo decode threads, min_side {args.min_side}: {worst} twice at once; every case twice, mixed")
        print(f"{'':<36} {'worst x2 MB':>11} {'s':>6} {'mixed MB':>9} {'after MB':>9} {'s':>6}")
        arena2 = {"MALLOC_ARENA_MAX": "2"}
        slack = 1.0
        for label, budget, env in (
            ("no budget", 0, None),
            (f"PixelBudget({n / 1e6:.0f} MP)", n, None),
            (f"PixelBudget({n / 1e6:.0f} MP), MALLOC_ARENA_MAX=2", n, arena2),
            (f"PixelBudget({2 * n / 1e6:.0f} MP)", 2 * n, None),
        ):
            pair = measure([paths[worst]] * 2, "new", old_module, n, args.min_side, 2, budget, env)
            mixed = measure([paths[k] for k in names] * 2, "new", old_module, n, args.min_side, 2, budget, env)
            print(
                f"  {label:<34} {_mb(pair):>11} {_sec(pair):>6} {_mb(mixed):>9} {_mb(mixed, 'end_mb'):>9} "
                f"{_sec(mixed):>6}",
                flush=True,
            )
            if budget == n and env is None and "peak_mb" in mixed:
                # One image of the worst size at a time, yet the mixed stream peaks higher: allocator slack.
                slack = max(1.0, mixed["peak_mb"] / measured[worst])
        print()
        print(recommend(measured[worst] * MB / n, n, args.model_mb, args.buffered_mb, slack))
        if not all(m.get("reset", True) for r in rows.values() for m in r.values()):
            print("note: /proc/self/clear_refs was not writable; peaks include the imports")
    print(f"\n({time.perf_counter() - t_start:.0f} s)")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
