"""Data, by job: :mod:`.synthetic` draws smear fields and writes them as a raw folder, :mod:`.etl` turns a raw
folder into the split Parquet dataset with its manifest and data report (Spark), :mod:`.reading` reads that dataset
back for training and evaluation; :mod:`.spark` is the Spark session every Spark job here starts."""
