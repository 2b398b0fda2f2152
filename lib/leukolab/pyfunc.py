"""Where the first published models find their class: ``leukolab.pyfunc.SmearModel``.

Only for unpickling: their pickled ``python_model`` names this module, and a process that has already imported this
library loads them with its classes, so the gate can still compare a new candidate with such a registered champion.
The versions published after it, before :mod:`leukolab.predictor`, name :mod:`leukolab.publishing.model`. The class
lives in :mod:`leukolab.predictor.smear_model`.
"""

from leukolab.predictor.smear_model import SmearModel

__all__ = ["SmearModel"]
