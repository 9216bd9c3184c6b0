"""Remote mode: the MONAI Label app's HTTP API (monailabel_app/, docs/monailabel.md) with the standard
library only, so the module needs nothing Slicer does not ship. Every failure is a :class:`ClientError`
whose message says what to do: the server's own 4xx sentence, or that the server cannot be reached."""

from __future__ import annotations

import email
import email.policy
import json
import os
import urllib.error
import urllib.parse
import urllib.request
import uuid

TASK = "super_resolution"
BOX_TAG = "boxes"


class ClientError(RuntimeError):
    """A request to the MONAI Label server failed; the message is meant for the user."""


def _multipart(fields: dict[str, str], files: dict[str, tuple[str, bytes]]) -> tuple[bytes, str]:
    boundary = uuid.uuid4().hex
    parts = []
    for name, value in fields.items():
        parts.append(f'--{boundary}\r\nContent-Disposition: form-data; name="{name}"\r\n\r\n{value}\r\n'.encode())
    for name, (filename, data) in files.items():
        head = (
            f'--{boundary}\r\nContent-Disposition: form-data; name="{name}"; filename="{filename}"\r\n'
            "Content-Type: application/octet-stream\r\n\r\n"
        )
        parts.append(head.encode() + data + b"\r\n")
    return b"".join(parts) + f"--{boundary}--\r\n".encode(), f"multipart/form-data; boundary={boundary}"


def _form_parts(body: bytes, content_type: str) -> dict[str, bytes]:
    """The named parts of a multipart answer (MONAI Label's ``output=all``); none if it is not multipart."""
    message = email.message_from_bytes(
        f"Content-Type: {content_type}\r\n\r\n".encode() + body, policy=email.policy.HTTP
    )
    if not message.is_multipart():
        return {}
    return {
        part.get_param("name", header="content-disposition"): part.get_payload(decode=True)
        for part in message.iter_parts()
    }


class MonaiLabelClient:
    """Args:
    url: the server, e.g. ``http://127.0.0.1:8000``.
    timeout: seconds to wait for one answer (SR of a large radiograph takes a while on a CPU server).
    """

    def __init__(self, url: str, timeout: float = 600) -> None:
        parsed = urllib.parse.urlparse(url.strip())
        if parsed.scheme not in ("http", "https") or not parsed.netloc:
            raise ClientError(f"{url!r} is not a server address; give one like http://127.0.0.1:8000.")
        self.url, self.timeout = url.strip().rstrip("/"), timeout

    def _request(self, method: str, path: str, query: dict | None = None, fields=None, files=None) -> bytes:
        return self._exchange(method, path, query, fields, files)[0]

    def _exchange(self, method: str, path: str, query: dict | None, fields, files) -> tuple[bytes, str]:
        """(body, content type) of the answer."""
        url = f"{self.url}{path}" + (f"?{urllib.parse.urlencode(query)}" if query else "")
        body, headers = None, {}
        if fields is not None or files is not None:
            body, headers["Content-Type"] = _multipart(fields or {}, files or {})
        request = urllib.request.Request(url, data=body, method=method, headers=headers)
        try:
            with urllib.request.urlopen(request, timeout=self.timeout) as response:
                return response.read(), response.headers.get("Content-Type", "")
        except urllib.error.HTTPError as e:
            try:
                detail = json.loads(e.read()).get("detail", "")
            except ValueError:
                detail = ""
            raise ClientError(f"the server refused ({e.code}): {detail or e.reason}") from e
        except (urllib.error.URLError, OSError) as e:
            reason = getattr(e, "reason", e)
            raise ClientError(f"cannot reach the MONAI Label server at {self.url} ({reason}); is it running?") from e

    def info(self) -> dict:
        return json.loads(self._request("GET", "/info/"))

    def methods(self) -> list[dict]:
        """The methods the server runs, as the monai-sr app lists them in its info."""
        methods = self.info().get("methods")
        if not isinstance(methods, list):
            raise ClientError(
                f"the server at {self.url} lists no super-resolution methods; is it running the monai-sr app?"
            )
        return methods

    def upload(self, path: str, image_id: str) -> str:
        """Store an image file under ``image_id``; returns the id the server gave it."""
        with open(path, "rb") as f:
            data = f.read()
        answer = self._request(
            "PUT",
            "/datastore/",
            {"image": image_id},
            fields={"params": "{}"},
            files={"file": (os.path.basename(path), data)},
        )
        return json.loads(answer)["image"]

    def infer(self, image_id: str, params: dict | None = None) -> bytes:
        """The SR image file (its bytes) of a stored image; ``params`` override method, scale, weights."""
        return self._request(
            "POST",
            f"/infer/{TASK}",
            {"image": image_id, "output": "image"},
            fields={"params": json.dumps(params or {})},
        )

    def store_in_pacs(self, image_id: str, params: dict | None = None) -> str:
        """Have the server super-resolve a PACS series and store the SR back in the PACS as a derived series
        (a server started on a DICOMweb PACS); the stored SeriesInstanceUID."""
        answer = self._request(
            "POST",
            f"/infer/{TASK}",
            {"image": image_id, "output": "json"},
            fields={"params": json.dumps({**(params or {}), "store_in_pacs": True})},
        )
        return json.loads(answer)["stored_series"]

    def infer_file(self, path: str, params: dict | None = None) -> tuple[bytes, dict]:
        """The SR image file (its bytes) of a local image file, sent with the request and not stored, and the
        server's account of it (its params: method, weights, and for several samples the maps on offer)."""
        with open(path, "rb") as f:
            data = f.read()
        body, content_type = self._exchange(
            "POST",
            f"/infer/{TASK}",
            {"output": "all"},
            fields={"params": json.dumps(params or {})},
            files={"file": (os.path.basename(path), data)},
        )
        parts = _form_parts(body, content_type)
        if "image" not in parts:
            raise ClientError(f"the server at {self.url} answered without an image; is it running the monai-sr app?")
        return parts["image"], json.loads(parts.get("params") or "{}")

    def save_boxes(self, image_id: str, doc: dict) -> None:
        """Store a markups ROI document as the image's abnormality boxes (validated by the server)."""
        self._request(
            "PUT",
            "/datastore/label",
            {"image": image_id, "tag": BOX_TAG},
            fields={"params": "{}"},
            files={"label": ("boxes.json", json.dumps(doc).encode())},
        )

    def boxes(self, image_id: str) -> dict:
        return json.loads(self._request("GET", "/datastore/label", {"label": image_id, "tag": BOX_TAG}))


def markups_document(rois: list[tuple[str, list[float], list[float], list[float]]]) -> dict:
    """A markups ROI document (the app's ``boxes`` label) from Slicer ROIs given as (finding name, centre
    in RAS mm, size in mm, 3x3 orientation flattened row by row), as the ROI nodes report them."""
    return {
        "markups": [
            {
                "type": "ROI",
                "name": name,
                "coordinateSystem": "RAS",
                "coordinateUnits": "mm",
                "roiType": "Box",
                "center": [float(v) for v in center],
                "size": [float(v) for v in size],
                "orientation": [float(v) for v in orientation],
                "controlPoints": [{"label": name, "position": [float(v) for v in center]}],
            }  # fmt: skip
            for name, center, size, orientation in rois
        ]
    }
