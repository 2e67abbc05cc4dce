"""A killed slider calibration resumes from its last finished window: through the engine
and the variant store on ref-tiny, a calibration stopped right after window k (by an
exception from the resume file's save, standing in for SIGKILL: the file on disk is all
the next run sees) trains only the windows after k when run again, and merges to exactly
the weights of an uninterrupted run. The resume file sits in the plan's store folder and
is gone once the plan's blocks are complete."""

from __future__ import annotations

import copy

import pytest
import torch

from lwq.errors import LwqError
from lwq.modeling.blocks import find_blocks
from lwq.modeling.capture import BlockInputs
from lwq.plan import Plan
from lwq.quant import make_backend
from lwq.quant.engine import Engine
from lwq.quant.install import PlanApplier
from lwq.quant.slider import SliderQuant
from lwq.quant.store import ResumeFile, VariantStore
from tests.conftest import reference_calibration

SETTINGS = {"epochs": 2, "group_size": 128}  # 12 blocks, (2, 1, 4): 13 windows a pass
PLAN = Plan((2, 3, 2, 2, 16, 3, 2, 2, 3, 2, 2, 3))
IDENTITY = {"model": "ref-tiny", "quant": {"name": "slider", **SETTINGS}}


class Killed(Exception):
    """Stands in for the process being killed right after a window was saved."""


class KilledAfter(ResumeFile):
    """The real resume file whose `after`-th save (of this run) is the last one."""

    def __init__(self, folder, after: int | None, saved: list[dict]) -> None:
        super().__init__(folder)
        self.after, self.saved = after, saved

    def save(self, tensors, position) -> None:
        super().save(tensors, position)
        self.saved.append(position)
        if len(self.saved) == self.after:
            raise Killed


class Store(VariantStore):
    """The variant store with a resume file that can be killed and that logs its saves."""

    def __init__(self, directory, after: int | None = None) -> None:
        super().__init__(directory, IDENTITY)
        self.after, self.saved = after, []

    def resume(self, bits, n) -> ResumeFile:
        return KilledAfter(self.folder(bits, n), self.after, self.saved)


@pytest.fixture(scope="module")
def calibration(ref_model):
    model, tokenizer = ref_model
    ids = reference_calibration(tokenizer, samples=2, seq_len=32)
    return find_blocks(model), lambda: BlockInputs.capture(model, find_blocks(model), ids)


def _calibrate(calibration, store: Store, trained: list) -> list[dict]:
    """Every block's merged weights after applying PLAN (the model is put back after)."""
    blocks, capture = calibration
    applier = PlanApplier(blocks, Engine(make_backend("slider", **SETTINGS), capture, store))
    original_train = SliderQuant._train

    def counted(self, *args, **kwargs):
        trained.append(args[3])  # the window
        return original_train(self, *args, **kwargs)

    SliderQuant._train = counted
    try:
        applier.apply(PLAN)
        return [{k: v.clone() for k, v in b.state_dict().items()} for b in blocks]
    finally:
        SliderQuant._train = original_train
        applier.restore()


@pytest.fixture(scope="module")
def uninterrupted(calibration, tmp_path_factory):
    trained: list = []
    store = Store(tmp_path_factory.mktemp("whole"))
    return _calibrate(calibration, store, trained), trained, store.saved


@pytest.mark.parametrize("k", [5, 13 + 6])  # in the first pass; in the second
def test_a_killed_calibration_resumes_after_its_last_window_with_the_same_result(
    calibration, uninterrupted, tmp_path, k
):
    whole, whole_trained, whole_saved = uninterrupted
    assert len(whole_saved) == 2 * 13 and len(whole_trained) == 2 * 13
    killed, first = Store(tmp_path, after=k), []
    with pytest.raises(Killed):
        _calibrate(calibration, killed, first)
    folder = killed.folder(PLAN.bits, len(PLAN.bits))
    assert (folder / ResumeFile.NAME).exists() and not (folder / "complete").exists()
    again, second = Store(tmp_path), []
    merged = _calibrate(calibration, again, second)
    assert len(first) == k and len(second) == 2 * 13 - k  # no window trained twice
    assert second == whole_trained[k:]
    assert again.saved == whole_saved[k:]  # it went on right after window k
    for ours, theirs in zip(merged, whole, strict=True):
        assert ours.keys() == theirs.keys()
        assert all(torch.equal(ours[name], theirs[name]) for name in ours), "not bit-identical"
    assert (folder / "complete").exists()
    assert not any(
        p.name.startswith((ResumeFile.NAME, f".{ResumeFile.NAME}")) for p in folder.iterdir()
    )


def test_the_resume_file_is_replaced_whole_and_cleared_with_what_a_kill_left(tmp_path):
    resume = ResumeFile(tmp_path / "plan")
    assert resume.load() is None
    resume.save({"a": torch.ones(3)}, {"pass": "0", "done": "1"})
    resume.save({"a": torch.zeros(3)}, {"pass": "1", "done": "4"})
    tensors, position = resume.load()
    assert torch.equal(tensors["a"], torch.zeros(3)) and position == {"pass": "1", "done": "4"}
    assert [p.name for p in resume.path.parent.iterdir()] == [ResumeFile.NAME]
    (resume.path.parent / f".{ResumeFile.NAME}.999.tmp").write_bytes(b"torn")
    resume.clear()
    assert list(resume.path.parent.iterdir()) == []


def test_a_resume_file_of_other_blocks_is_refused_naming_it(calibration, tmp_path):
    blocks, capture = calibration
    resume = ResumeFile(tmp_path)
    resume.save({"0.0.upper": torch.zeros(1)}, {"pass": "0", "done": "1"})
    backend = make_backend("slider", **SETTINGS, windows="0-1")
    copies = [copy.deepcopy(b) for b in list(blocks)[:2]]
    with pytest.raises(LwqError, match="delete it to calibrate from the start"):
        backend.quantize(copies, (2, 2), capture(), resume=resume)
