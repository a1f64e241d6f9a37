"""Outcomes and what is made of them: reports, the results history, regressions, known bugs."""
