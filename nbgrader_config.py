"""nbgrader settings shared by every grading path (make demo, check, tests, CI).

servelab does not grade inside this folder: autograder/course.py builds a throw-away
nbgrader course directory, copies solutions/ in as its source, loads this file there and
points CourseDirectory.root at it.
"""
c = get_config()  # noqa: F821 - provided by traitlets when nbgrader loads this file


# A cell that runs longer is interrupted and scored 0 (CellTimeoutError). The longest
# test cell starts four servers (about 2 s each) and the checks' own limits (server
# start 20 s, request 5 s, isolated call 20 s) end a hang well before this.
c.Execute.timeout = 60
c.Execute.interrupt_on_timeout = True
# Kernel start-up on a loaded 2-core machine can be slow.
c.Execute.startup_timeout = 120
# nbgrader raises CellTimeoutError when a cell's last output takes over iopub_timeout (4 s by
# default) to arrive after its reply: on a loaded machine that failed whole correct notebooks.
c.Execute.iopub_timeout = 60

# A student who deletes a graded cell gets it back (and is graded on it), instead of
# breaking the run.
c.OverwriteCells.add_missing_cells = True

c.ClearSolutions.code_stub = {"python": "# YOUR CODE HERE\nraise NotImplementedError()"}
c.ClearSolutions.text_stub = "YOUR ANSWER HERE"
