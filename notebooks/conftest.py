# The exercise notebook's blanks raise NotImplementedError by design: nbval does not run it as it is.
# tests/unit/test_exercises.py executes it with the solutions filled in, and runs every check on the blanks.
collect_ignore = ["exercises"]
