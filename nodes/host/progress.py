"""One monotone progress bar for a guided run (steps plus the refinement budget), and the node's progress text."""
from __future__ import annotations

import sys

import comfy.utils
from comfy_execution.utils import get_executing_context


def _send_progress_text(text: str) -> None:
    """Show ``text`` on the executing node in the frontend (ComfyUI's progress text); a no-op without a server."""
    server = getattr(getattr(sys.modules.get("server"), "PromptServer", None), "instance", None)
    context = get_executing_context()
    if server is not None and context is not None:
        server.send_progress_text(text, context.node_id)


class RunProgress:
    """One monotone progress bar for a guided run: the sampler's steps plus the refinement budget.

    Positions are fixed by the plan, not by what happens: sampler step i ends at ``i + 1 + budget(≤ i)`` and
    refinement iteration k at step i sits at ``i + budget(< i) + k``, where ``budget`` sums ``max_iters`` over the
    refinement steps. A refinement that stops early leaves its unused budget behind in one forward jump, so the
    bar never goes back. The sampler's own bar (its preview callback) is moved onto the same total; what the
    refinement is doing is shown as the node's progress text.
    """

    def __init__(self, plan, method: str):
        self.steps, self.method = plan.total, method
        r = plan.refinement
        self.refine_steps = [] if r is None else \
            sorted(i for i in plan.guided if plan.refine_at(i) and plan.alphas[i] != 0)
        self.max_iters = r.max_iters if r is not None else 0
        self.total = self.steps + self.max_iters * len(self.refine_steps)
        self.pbar = None

    def _budget_before(self, step: int) -> int:
        return self.max_iters * sum(1 for s in self.refine_steps if s < step)

    def after_step(self, i: int) -> int:
        """Bar position once sampler step ``i`` (0-based) is done."""
        return i + 1 + self._budget_before(i + 1)

    def at_refinement(self, i: int, k: int) -> int:
        """Bar position after refinement iteration ``k`` (1-based) at step ``i``."""
        return i + self._budget_before(i) + min(k, self.max_iters)

    def refinement(self, i: int, k: int) -> None:
        if self.pbar is None:
            self.pbar = comfy.utils.ProgressBar(self.total)
        self.pbar.update_absolute(self.at_refinement(i, k), self.total)
        _send_progress_text(f"{self.method}: refining step {i + 1} of {self.steps}, iteration {k} of at most "
                            f"{self.max_iters}")

    def refined(self, i: int, iterations: int) -> None:
        if i in self.refine_steps:
            _send_progress_text(f"{self.method}: step {i + 1} of {self.steps} refined in {iterations} of at most "
                                f"{self.max_iters} iterations (bar: {self.steps} steps + "
                                f"{self.total - self.steps} refinement iterations at most)")

    def wrap_callback(self, callback):
        """The sampler's per-step callback (preview + bar), its step and total moved onto this bar."""
        if callback is None or not self.refine_steps:
            return callback

        def moved(step, x0, x, total_steps):
            return callback(self.after_step(step) - 1, x0, x, self.total)
        return moved
