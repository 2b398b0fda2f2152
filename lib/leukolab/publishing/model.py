"""Where models published before :mod:`leukolab.predictor` find their class: ``leukolab.publishing.model.SmearModel``.

Only for unpickling: the pickled ``python_model`` of the versions published between the library's packages and the
predictor package names this module (older ones name :mod:`leukolab.pyfunc`). The class lives in
:mod:`leukolab.predictor.smear_model`; import it from there.
"""

from leukolab.predictor.smear_model import SmearModel

__all__ = ["SmearModel"]
