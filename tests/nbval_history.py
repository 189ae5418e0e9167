"""A pytest plugin for the nbval runs of ``conftest.run_nbval``: execute each cell with history on, as
Jupyter and papermill do.

nbval 0.11 executes with ``store_history=False``, and IPython decides whether a final ``;`` hides a
cell's value by looking at the last *stored* input (``DisplayHook.quiet``). Without history a cell
ending in ``claim(...);`` shows ``True`` under nbval and nothing in the notebook, a difference in the
tool, not in the chapter.
"""

import nbval.kernel


def _execute_cell_input(self, cell_input, allow_stdin=None):
    return self.kc.execute(cell_input, store_history=True, allow_stdin=allow_stdin, stop_on_error=False)


nbval.kernel.RunningKernel.execute_cell_input = _execute_cell_input
