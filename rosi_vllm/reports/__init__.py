"""Reports people compare: the A/B report from a server's metrics, and the one place figures are drawn.

Needs the ``[eval]`` extra (matplotlib) only to draw; the serving path never imports it.
"""
