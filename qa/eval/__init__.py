"""Evaluation, pure and rank-0: span decoding (``decode``; the rule as plain loops is tests/support/reference_decode.py), SQuAD scoring
(``squad_metrics``), decode + score (``evaluator``), output files (``outputs``), offline re-decoding (``cli``),
whitespace-free answer spans (``trim``), the evaluation section of the config and decoding defaults
(``settings``).
"""
