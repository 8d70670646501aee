"""The pure core: everything that decides, over plain values.

Profile names and tables, the value types of what a GPU offers, holds and should
hold, the config language's values, selection (which layout each GPU gets), the
placement search and the planner that turns a snapshot and a goal into one Plan.
Tested without NVML.

May import: the standard library's pure modules, ``migd.errors`` and ``migd.core``.
Never pynvml, subprocess, threading, sockets or file I/O, nor any other part of migd.
"""
