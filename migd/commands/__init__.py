"""The verbs of the ``migd`` command, one module per family, as mig-parted keeps one
package per command.

``validate`` (a config file, offline), ``geometry`` (plan, apply, assert, export,
generate-config, checkpoint, restore), ``daemon`` (run, reload, status, install-unit)
and ``sim`` (the simulated node). Each registers its verbs with their flags and turns
arguments into calls and results into text and exit codes; no decision is made here.

May import: every part of migd; this is where the parts are put together.
"""
