"""Raw folder to dataset: :mod:`.job` runs the two Spark passes (with :mod:`.params`), reading the files that
:mod:`.raw_files`, :mod:`.sources`, :mod:`.labels` and :mod:`.extra_sources` name and deriving :mod:`.masks`;
between them :mod:`.curation` groups :mod:`.near_duplicates` and patients, draws the :mod:`.splits` and
:mod:`.acquisition_splits` and measures :mod:`.leakage`; :mod:`.parquet` writes the :mod:`.schema`. :mod:`.raw`
chooses the raw folder; :mod:`.data_report` (with :mod:`.acquisition_report` and the shortcut :mod:`.probes`)
shows what went in and out."""
