"""ddpm_course: the companion package of the diffusion-models course.

Each module matches a chapter of the book (see ARCHITECTURE.md): ``schedules`` and
``diffusion`` for the ELBO chapter, ``samplers`` for DDIM and fast sampling, and so on.
"""

__version__ = "0.1.0"
