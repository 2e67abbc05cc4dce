"""User-facing errors: run.py prints these as one line (no traceback) and exits non-zero."""


class LwqError(Exception):
    """Bad input or environment; the message says what is wrong and names the fix."""


class PointsFailed(Exception):
    """Some points failed (recorded with their reason); a rerun retries them."""
