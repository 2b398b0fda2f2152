"""Logged models judged on the splits: the comparison table, the champion chosen on val, the promotion gate, external test sets."""
