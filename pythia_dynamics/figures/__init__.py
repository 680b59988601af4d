"""Report sections built from the results store only (never from models), one module per analysis."""

from pythia_dynamics.figures import loss, norms  # noqa: F401
from pythia_dynamics.figures.sections import Section, SectionInputs, render_section, section

__all__ = ["Section", "SectionInputs", "render_section", "section"]
