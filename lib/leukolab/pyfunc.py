"""Where models published before the library's packages find their class: ``leukolab.pyfunc.SmearModel``.

Their pickled ``python_model`` names this module, and a process that has already imported this library loads
them with its classes, so the gate can still compare a new candidate with such a registered champion. The class
lives in :mod:`leukolab.publishing.model`.
"""

from leukolab.publishing.model import SmearModel

__all__ = ["SmearModel"]
