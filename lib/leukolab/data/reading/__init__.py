"""The ETL's dataset as training and evaluation read it: :mod:`.dataset` (manifest, splits, a torch Dataset),
:mod:`.streaming` (row groups streamed over ranks and workers) and :mod:`.loading` (which of the two, by size)."""
