import pytest

from lwq.errors import LwqError
from lwq.plan import Plan, blocks_for_fraction, sweep_points, two_level_plan


def test_paper_budget_40_blocks_at_37_5_percent_is_3_25_bits():
    k = blocks_for_fraction(0.375, 40)
    plan = two_level_plan(list(range(40)), k, high=4, low=2)
    assert k == 15
    assert plan.avg_bits == 3.25


def test_the_least_important_blocks_go_low():
    order = [3, 0, 2, 1]  # block 3 least important
    plan = two_level_plan(order, 2, high=8, low=4)
    assert plan.bits == (4, 8, 8, 4)
    assert plan.low_blocks(4) == [0, 3]


def test_plan_round_trips_through_json():
    plan = Plan((4, 2, 2, 16))
    assert Plan.from_json(plan.to_json()) == plan


@pytest.mark.parametrize("fraction", [-0.1, 1.01])
def test_fraction_out_of_range_is_refused(fraction):
    with pytest.raises(LwqError, match="outside \\[0, 1\\]"):
        blocks_for_fraction(fraction, 12)


def test_sweep_points_are_distinct_and_sorted():
    assert sweep_points(12, [1.0, 0.0, 0.5, 0.52], None) == [0, 6, 12]
    assert sweep_points(12, None, [5, 0, 5]) == [0, 5]
    with pytest.raises(LwqError, match="outside 0..12"):
        sweep_points(12, None, [13])


def test_bad_plans_are_refused():
    with pytest.raises(LwqError, match="permutation"):
        two_level_plan([0, 0, 1], 1, high=4, low=2)
    with pytest.raises(LwqError, match="swap them"):
        two_level_plan([0, 1], 1, high=2, low=4)


def test_the_plan_is_pure_data_code():
    """Plans and the allocator are pure: importing them pulls in no torch (a planning tool or
    a dry run can use them without it)."""
    import subprocess
    import sys

    code = "import sys, lwq.plan, lwq.allocate; print('torch' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "False"
