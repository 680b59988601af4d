"""Report sections built from the results store only (never from models), one module per analysis.

Every module in this package registers its sections (`@section(analysis_name)`) on import.
"""

import importlib
import pkgutil

from pythia_dynamics.figures.sections import Section, SectionInputs, render_section, section

for _module in pkgutil.iter_modules(__path__):
    if _module.name != "sections":
        importlib.import_module(f"{__name__}.{_module.name}")

__all__ = ["Section", "SectionInputs", "render_section", "section"]
