"""migd's benchmarks: how much faster and gentler than mig-parted, in numbers.

Run them with ``python -m bench`` (``--quick`` for the smoke version); the figures
and the command that produced them go to BENCHMARKS.md.
"""
