"""``leukolab predict``: score image files and folders with a registered model, on this machine or as a Spark job.

:func:`leukolab.scoring.predict.predict_paths` gives one row per file (:mod:`leukolab.scoring.rows`): the
prediction, the referral decision, or the reason the file cannot be used (the reason codes of
:func:`leukolab.images.decode_image`, as the API's uploads and the ETL give them).
"""
