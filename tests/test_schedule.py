"""Paper schedules (50 steps) scaled to the run's step count."""
import numpy as np
import pytest
from attention_align.guidance.schedule import make_plan, scale_step, step_size


def test_fifty_steps_reproduce_the_official_arrays():
    official = 20 * np.sqrt(np.linspace(1.0, 0.5, 51))      # A&E/T-SAM: PNDM's 51 timesteps for 50 steps
    assert [step_size(i, 50, 20.0) for i in range(50)] == pytest.approx(official[:50].tolist(), abs=1e-12)
    assert step_size(7, 50, 20.0, decay=False) == 20.0


def test_steps_scale_proportionally():
    assert [scale_step(k, 20) for k in (0, 10, 20, 25, 30)] == [0, 4, 8, 10, 12]
    plan = make_plan(20, 25, 20.0, refine_paper_thresholds={0: 0.95, 10: 0.5, 20: 0.2}, max_iters=20)
    assert plan.guided == frozenset(range(10))
    assert plan.refinement.thresholds == ((0, 0.95), (4, 0.5), (8, 0.2))
    assert plan.alphas[4] == pytest.approx(20 * np.sqrt(1 - 0.5 * 4 / 20))


def test_refinement_outside_the_guided_window_is_dropped_and_strength_scales():
    plan = make_plan(4, 25, 20.0, strength=0.5, refine_paper_thresholds={0: 0.9, 10: 0.5, 20: 0.2}, max_iters=20)
    assert plan.guided == frozenset({0, 1})
    assert plan.refinement.steps == {0, 1}                    # 20 of 50 → step 2, not guided
    assert plan.alphas[0] == pytest.approx(10.0)
    assert make_plan(4, 0, 20.0).guided == frozenset()


def test_zero_steps_is_an_error():
    with pytest.raises(ValueError, match="steps: a run needs at least 1 step"):
        make_plan(0, 25, 20.0)
