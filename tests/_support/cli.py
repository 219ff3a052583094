"""
What the command-line tests share, in process and as a program: the original
routes files, a container host key and its fingerprint, and
L{CommandLineMixin}, which runs C{python -m edd_gateway}'s C{main} in process.
"""

from __future__ import annotations

import base64
import hashlib
import io
import os

from edd_gateway.__main__ import main

ORIGINALS = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "fixtures", "original")


ROUTES = os.path.join(ORIGINALS, "routes.yaml")


CONFIGMAP = os.path.join(ORIGINALS, "gateway-routes.configmap.yaml")


class CommandLineMixin:
    def runCommand(self, *argv: str) -> tuple[int, str, str]:
        out, err = io.StringIO(), io.StringIO()
        status = main(list(argv), stdout=out, stderr=err)
        return status, out.getvalue(), err.getvalue()

    def writeRoutes(self, text: str) -> str:
        path: str = self.mktemp()  # type: ignore[attr-defined]
        with open(path, "w") as file:
            file.write(text)
        return path


KEY_TEXT = "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIFRWnd03oL7qVUScEq+4xbgWp5e4Apuox818FnnDghrf"


#: What ssh-keygen -l prints for KEY_TEXT.
KEY_FINGERPRINT = "SHA256:" + base64.b64encode(hashlib.sha256(base64.b64decode(KEY_TEXT.split()[1])).digest()
                                                ).decode().rstrip("=")
