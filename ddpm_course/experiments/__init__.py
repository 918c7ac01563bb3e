"""Experiments: the benchmarks, sweeps and evaluations that write the book's results files.

The top layer of the package (see ARCHITECTURE.md): an experiment imports the chapter modules and
writes where it is told (every one takes its output path); no chapter module imports it.
``ddpm-course bench | nfe-sweep | ablate`` and ``python -m ddpm_course.experiments.<name>``
run them; the book's committed results name ``ddpm_course/results/...`` explicitly.
"""
