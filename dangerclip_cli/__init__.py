"""The ``dangerclip`` command line: the one package allowed to name every other (``dangerclip``, ``service``,
``training``, ``pseudomask``). Each subcommand's module is imported only when chosen, so ``dangerclip serve``
never loads torch. ``demo`` lives here because it composes a broker, a worker and (as a fallback) a model built
with the torch half: an application of the packages, not a part of any of them.
"""
