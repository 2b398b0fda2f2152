"""The review loop's data: referred cases kept for review, the reviews, Label Studio's format, and reviewed cases
as a dataset source."""
