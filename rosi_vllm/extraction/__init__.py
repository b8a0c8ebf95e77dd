"""Research layer: prompt data, direction extraction, selection and evaluation (the ``[eval]`` extra).

Nothing here runs in a serving process; serving never imports this package.
"""
