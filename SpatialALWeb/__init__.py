"""The browser front end: the annotation loop in a web page (trame-slicer), on the Slicer modules' own Logic.

``session``: the loop's actions on an MRML scene (no GUI). ``app``: the page (trame-slicer's views and Segment Editor,
the loop's panel). ``server``: ``spatial-al web``. ``folders``: which files the server may read and write.

Needs the ``web`` extra (``pip install -e '.[web]'``, which ``make`` installs) and runs from the source tree, beside
the module folders whose Logic it imports.
"""
