"""``spatial-al web``: serve the annotation app to a browser.

The server binds 127.0.0.1 unless told otherwise, and every connection must present the access token: the page's
URL carries it (``?secret=...``), printed once at start; a connection without it is refused by the websocket's
handshake, before any data is sent. The token is generated at start, or read from ``SPATIAL_AL_WEB_TOKEN`` (never from
the command line, where other users of the machine could read it). One annotation session per server process.
"""

from __future__ import annotations

import contextlib
import logging
import os
import secrets
import sys
from pathlib import Path

TOKEN_VARIABLE = "SPATIAL_AL_WEB_TOKEN"
LOOPBACK = ("127.0.0.1", "localhost", "::1")


def useOffscreenRendering() -> None:
    """Render through EGL (Mesa's llvmpipe without a GPU) when no display is there, unless the user chose already."""
    if not os.environ.get("DISPLAY") and not os.environ.get("WAYLAND_DISPLAY"):
        os.environ.setdefault("VTK_DEFAULT_OPENGL_WINDOW", "vtkEGLRenderWindow")


@contextlib.contextmanager
def argumentsOnlyOurs():
    """trame parses ``sys.argv`` when it starts: within the block it sees none of ``spatial-al web``'s arguments."""
    saved = sys.argv
    sys.argv = saved[:1]
    try:
        yield
    finally:
        sys.argv = saved


def serve(data=None, segmentation=None, output="spatial-al-web", host="127.0.0.1", port=0, filters=None) -> None:
    """Open the cases of ``data`` (see :func:`SpatialALWeb.folders.casesFrom`) and serve the app until stopped.

    Args:
        data: an image, a folder of images or DICOM series, ``dicomweb:URL``, or None for the demo chest CT.
        segmentation: the image's segmentation (with one image only).
        output: the folder the app writes into (created if needed).
        host: the address to bind; 127.0.0.1 keeps the app to this machine.
        port: the port (0: a free one); the URL printed says which.
        filters: QIDO-RS filters choosing the series of a ``dicomweb:URL``.
    """
    useOffscreenRendering()
    from trame.app import get_server

    from SpatialALWeb.app import AnnotationApp
    from SpatialALWeb.folders import casesFrom

    logging.basicConfig(level=logging.WARNING, format="%(asctime)s %(name)s %(levelname)s %(message)s")
    logging.getLogger("spatial_al").setLevel(logging.INFO)  # ours: what the page was told, and why it failed
    output = Path(output).resolve()
    dataFolder, cases = casesFrom(data, segmentation, output, filters)
    token = os.environ.get(TOKEN_VARIABLE) or secrets.token_urlsafe(24)
    server = get_server("spatial-al-web", client_type="vue3")
    server.cli.set_defaults(authKey=token)
    AnnotationApp(dataFolder, cases, output, server)
    shown = "127.0.0.1" if host in ("0.0.0.0", "::") else host

    def announce(**_):
        print(f"Spatial Active Learning in the browser: http://{shown}:{server.port}/?secret={token}", flush=True)
        if host not in LOOPBACK:
            print(f"Bound to {host}: anyone who can reach it needs the URL above (its secret).", flush=True)

    server.controller.on_server_ready.add(announce)
    with argumentsOnlyOurs():
        server.start(host=host, port=port, open_browser=False, show_connection_info=False)
