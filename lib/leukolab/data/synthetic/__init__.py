"""The embedded stand-in for the ALL dataset: :mod:`.paint` paints stained objects in optical density,
:mod:`.smears` renders a class's smear field, :mod:`.folder` writes fields as a raw dataset folder (with
:mod:`.sessions`' acquisition sessions), :mod:`.shift` draws images a smear model must not answer."""
