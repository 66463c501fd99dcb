"""The engine: concept sets, unit masks, formulas, backends, the beam search and its driver.

It owns everything between arrays and explanations (:class:`.results.Explanation`) and imports
nothing above it (no file I/O, command line, report or model code): see
``docs/ARCHITECTURE.md``.
"""
