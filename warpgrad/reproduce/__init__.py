"""``warpgrad reproduce``: the paper's claims run as one suite, each with the paper's number
beside ours, paired tests and a verdict.

- :mod:`~warpgrad.reproduce.claims`: the nine claims, the runs each needs at each budget
  and how each is judged;
- :mod:`~warpgrad.reproduce.stats`: paired t-tests, confidence intervals and verdicts;
- :mod:`~warpgrad.reproduce.suite`: runs the claims (normal run directories, skipped when
  complete) and writes ``report.md``, ``results.json`` and the figures;
- :mod:`~warpgrad.reproduce.figures`: the figures.

Example (the claims and their CPU estimates, as ``warpgrad reproduce --list`` prints them):

>>> from warpgrad.reproduce import CLAIMS
>>> list(CLAIMS)[:3]
['multishot', 'alphabets', 'ladder']
>>> len(CLAIMS)
9
"""

from warpgrad.reproduce.claims import CLAIMS, SCALES
from warpgrad.reproduce.suite import run_suite

__all__ = ["CLAIMS", "SCALES", "run_suite"]
