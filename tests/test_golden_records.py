"""Same numbers through the engine: a fixed ref-tiny sweep gives the records the code before
the engine refactor gave (tests/golden/, written by commit 000e483 with the overrides
below), apart from times, memory, library versions and the code's commit.

On the machine that wrote them they are identical to the last bit; floats are compared to
a relative 1e-9 so that another CPU kind's last-bit rounding is not mistaken for a change.
"""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest

from lwq.commands.sweep import run_sweep
from lwq.results.store import RecordStore
from tests.conftest import ROOT, compose_config

GOLDEN = Path(__file__).parent / "golden"
COMMON = [
    "tracking=none",
    "eval.limit=8",
    "sweep.fractions=[0,0.5,1]",
    "calib.samples=8",
    "calib.seq_len=128",
]
SWEEPS = {
    "rtn": ["quant=rtn"],
    "gptq": ["quant=gptq"],
    "gptq_seq": ["quant=gptq", "quant.settings.inputs=sequential"],
    "hqq": ["quant=hqq"],
    "gguf": [
        "quant=gguf",
        "sweep.high=8",
        "sweep.low=4",
        "quant.settings.types.4=q4_0",
        "quant.settings.types.8=q8_0",
    ],
}
# speed and memory settings added after the golden records; the numbers must not move
LATER_SETTINGS = [
    ("eval", "logits_memory"),
    ("eval", "reuse_memory"),
    ("eval", "reuse_on"),
    ("eval", "dtype"),  # float32, the golden records' evaluation (bfloat16 changes keys)
    (None, "allocate"),  # how a budget's plan is found (dp, as then; no budget here)
    (None, "originals"),  # where changed blocks' originals wait (disk or memory: same numbers)
]
CASES = [
    pytest.param(name, marks=[] if name == "rtn" else [pytest.mark.slow], id=name)
    for name in SWEEPS
]


def _comparable(record: dict) -> dict:
    """A record without what may change run to run: times, memory, versions, the commit."""
    kept = {
        k: v
        for k, v in record.items()
        if k not in {"code", "time", "seconds", "versions", "checksum"}
        and not k.endswith(("_seconds", "_memory"))
    }
    kept["config"] = {k: v for k, v in kept["config"].items() if k != "paths"}
    for node, setting in LATER_SETTINGS:  # absent from the golden records' configs
        (kept["config"] if node is None else kept["config"].get(node, {})).pop(setting, None)
    return json.loads(json.dumps(kept, sort_keys=True))


def _differences(ours, theirs, where: str = "") -> list[str]:
    if isinstance(ours, dict) and isinstance(theirs, dict):
        if ours.keys() != theirs.keys():
            return [f"{where}: fields {sorted(ours.keys() ^ theirs.keys())}"]
        return [d for k in ours for d in _differences(ours[k], theirs[k], f"{where}.{k}")]
    if isinstance(ours, list) and isinstance(theirs, list) and len(ours) == len(theirs):
        return [
            d
            for i, (a, b) in enumerate(zip(ours, theirs, strict=True))
            for d in _differences(a, b, f"{where}[{i}]")
        ]
    if isinstance(ours, float) and isinstance(theirs, float):
        return (
            []
            if math.isclose(ours, theirs, rel_tol=1e-9, abs_tol=1e-15)
            else [f"{where}: {ours} != {theirs}"]
        )
    return [] if ours == theirs else [f"{where}: {ours!r} != {theirs!r}"]


@pytest.mark.parametrize("name", CASES)
def test_a_fixed_sweep_gives_the_records_of_the_code_before_the_engine(tmp_path, monkeypatch, name):
    monkeypatch.chdir(ROOT)  # the golden runs gave model.path as models/ref-tiny
    run_sweep(compose_config(*COMMON, *SWEEPS[name], f"paths.results={tmp_path}"))
    ours = {
        r["point_key"]: _comparable(r)
        for r in RecordStore(tmp_path / "ref-tiny" / "records.jsonl").read()
    }
    lines = (GOLDEN / f"{name}.jsonl").read_text().splitlines()
    golden = {r["point_key"]: r for r in map(json.loads, lines)}
    assert ours.keys() == golden.keys()  # the same points, under the same keys
    for key, record in golden.items():
        assert _differences(ours[key], record) == [], key
