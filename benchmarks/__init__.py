"""Side-by-side benchmarks: gptsmith against reference implementations.

Run one with ``python -m benchmarks NAME`` (or ``gptsmith bench NAME``); list them with
``python -m benchmarks --list``. Each benchmark is a module here with a ``main(argv)`` that uses
``benchmarks.harness``. References come from the ``bench`` extra (``make bench``).
"""
