"""Hostile clients against the real server, started as a hospital starts it (``monailabel_app/serve.py``):
every stock MONAI Label endpoint the app does not need is closed, uploads are bounded and leave no temp file,
infer cannot read the server's files, no reply names a server path, the server answers while it infers and
turns excess requests away, and what MONAI Label itself answered with a 500 is a 4xx with one sentence.
Each test checks its status code and that nothing was stored, deleted or leaked."""

from __future__ import annotations

import io
import json
import shutil
import tarfile
import tempfile
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest
from conftest import DATA, needs_data, png_declaring
from PIL import Image

from monai_sr_bundle.batch import default_input
from monai_sr_bundle.data.datalist import nih_datalist
from tools.label_server import label_server, listening_pid

requests = pytest.importorskip("requests", reason="requests comes with monailabel (pip install -e '.[test]')")
pytest.importorskip("monailabel", reason="monailabel is a test dependency (pip install -e '.[test]')")

NIH = DATA / "nih_cxr14"
pytestmark = [needs_data(NIH / "images_512"), pytest.mark.server]
ORIGIN = "https://viewer.hospital.example"


@pytest.fixture(scope="module")
def server(tmp_path_factory, preloaded):
    root = tmp_path_factory.mktemp("hostile")
    studies = root / "studies"
    studies.mkdir()
    for d in nih_datalist("test")[:2]:
        shutil.copy(d["label"], studies)
    shutil.copy(default_input(), studies / "ct_small.dcm")
    conf = {"method": "srcnn", "max_upload_mb": 2, "max_pending": 2, "model_dir": root / "model"}
    shared_tmp = root / "shared_tmp"  # the temporary folder the server is started with (its own is app/tmp)
    shared_tmp.mkdir()
    env = {"TMPDIR": str(shared_tmp)}
    with label_server(root, studies, conf, options=("--cors_origin", ORIGIN), env=env, preloaded=preloaded) as url:
        yield SimpleNamespace(
            url=url, root=root, studies=studies, tmp=root / "app" / "tmp", shared_tmp=shared_tmp, ids=ids(studies)
        )


@pytest.fixture(scope="module")
def realm_down(tmp_path_factory, preloaded):
    """A server with MONAI Label's auth on whose realm cannot be reached (nothing listens on port 9); the
    tests that use it only send refused requests."""
    root = tmp_path_factory.mktemp("realm_down")
    studies = root / "studies"
    studies.mkdir()
    shutil.copy(default_input(), studies / "ct_small.dcm")
    env = {"MONAI_LABEL_AUTH_ENABLE": "true", "MONAI_LABEL_AUTH_REALM_URI": "http://127.0.0.1:9/realms/none"}
    with label_server(root, studies, {"method": "bicubic"}, env=env, ready_status=401, preloaded=preloaded) as url:
        yield SimpleNamespace(url=url, studies=studies)


def ids(studies: Path) -> list[str]:
    return sorted(p.name.split(".")[0] for p in studies.iterdir() if p.suffix in (".png", ".dcm"))


def snapshot(server) -> dict:
    """What a request must not change: the studies folder (labels too), the server's private temp folder and
    the ``tmp*`` entries of the temporary folder it was started with (its own, not the machine's, where the
    other pytest-xdist worker's tests come and go)."""
    shared = {p.name for p in server.shared_tmp.glob("tmp*")}
    return {
        "studies": sorted(
            str(p.relative_to(server.studies)) for p in server.studies.rglob("*") if ".lock" not in p.name
        ),
        "private_tmp": sorted(p.name for p in server.tmp.iterdir()),
        "shared_tmp": shared,
    }


def unchanged(server, before: dict, wait: float = 3.0) -> None:
    """The snapshot comes back to ``before`` (a sent result is removed just after its reply)."""
    deadline = time.monotonic() + wait
    while True:
        after = snapshot(server)
        new_shared = after["shared_tmp"] - before["shared_tmp"]
        if after["studies"] == before["studies"] and after["private_tmp"] == before["private_tmp"] and not new_shared:
            return
        if time.monotonic() > deadline:
            assert after["studies"] == before["studies"]
            assert after["private_tmp"] == before["private_tmp"], "temp files left in the server's folder"
            assert not new_shared, f"temp files left in {server.shared_tmp}: {new_shared}"
        time.sleep(0.2)


def no_leak(server, text: str) -> None:
    for private in (server.studies, server.root, tempfile.gettempdir(), Path.home()):
        assert str(private) not in text, f"reply names {private}: {text[:300]}"
    assert "/tmp" not in text and "tmp" not in text.replace("<tmp>", "")


def infer(server, image: str = "", params=None, timeout: float = 300, **files) -> requests.Response:
    data = {"params": params if isinstance(params, str) else json.dumps(params or {})}
    return requests.post(
        f"{server.url}/infer/super_resolution",
        params={"image": image, "output": "image"} if image else {"output": "image"},
        data=data,
        files=files or None,
        timeout=timeout,
    )


def png(width: int, height: int) -> bytes:
    buf = io.BytesIO()
    Image.fromarray(np.random.default_rng(0).integers(0, 255, (height, width), dtype=np.uint8)).save(buf, "PNG")
    return buf.getvalue()


CLOSED = [
    ("DELETE", "/datastore/image?id={id}"),
    ("DELETE", "/datastore/?id={id}"),
    ("DELETE", "/datastore/label?id={id}&tag=boxes"),
    ("GET", "/logs/?text=true"),
    ("GET", "/logs/gpu"),
    ("GET", "/datastore/dataset"),
    ("GET", "/model/super_resolution"),
    ("PUT", "/model/super_resolution"),
    ("DELETE", "/model/super_resolution"),
    ("POST", "/reload"),
    ("POST", "/batch/infer/super_resolution"),
    ("POST", "/scoring/"),
    ("GET", "/proxy/dicom/qido/studies"),
    ("POST", "/infer/wsi/super_resolution"),
    ("PUT", "/updatelabelinfo"),
    ("GET", "/session/abc"),
]


@pytest.mark.parametrize("method, path", CLOSED)
def test_stock_endpoints_the_app_does_not_need_are_closed(server, method, path):
    before = snapshot(server)
    r = requests.request(method, server.url + path.format(id=server.ids[0]), timeout=30)
    assert r.status_code == 404 and "not served by this server" in r.json()["detail"]
    unchanged(server, before)


def test_session_archives_cannot_write_outside(server):
    """MONAI Label's session upload unpacked ``../`` and absolute member names anywhere; it is closed."""
    target = server.root / "escaped.txt"
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w:gz") as tar:
        for name in ("../../escaped.txt", str(target)):
            info = tarfile.TarInfo(name)
            info.size = 3
            tar.addfile(info, io.BytesIO(b"owo"))
    before = snapshot(server)
    r = requests.put(
        f"{server.url}/session/", params={"uncompress": "true"}, files={"files": ("x.tar.gz", buf.getvalue())}
    )
    assert r.status_code == 404 and not target.exists() and not (server.root.parent / "escaped.txt").exists()
    r = requests.post(f"{server.url}/infer/super_resolution", params={"session_id": "abc"}, timeout=30)
    assert r.status_code == 404 and "sessions are turned off" in r.text
    unchanged(server, before)


def test_cors_answers_only_the_configured_origin(server):
    for origin, allowed in ((ORIGIN, True), ("https://evil.example", False)):
        preflight = requests.options(
            f"{server.url}/datastore/label",
            headers={"Origin": origin, "Access-Control-Request-Method": "PUT"},
            timeout=30,
        )
        got = requests.get(f"{server.url}/info/", headers={"Origin": origin}, timeout=30)
        assert (preflight.headers.get("access-control-allow-origin") == origin) is allowed
        assert (got.headers.get("access-control-allow-origin") == origin) is allowed
        assert "*" not in got.headers.get("access-control-allow-origin", "")


def test_infer_cannot_read_the_servers_files(server):
    """Only datastore ids and the request's own upload are read: not a temp file, not by params."""
    planted = [server.shared_tmp / "tmp_planted.png", server.tmp / "tmp_planted.png"]
    for p in planted:
        p.write_bytes(png(64, 64))
    before = snapshot(server)
    try:
        for p in planted:
            r = infer(server, str(p))
            assert r.status_code == 422 and "not a plain name" in r.text
            r = infer(server, server.ids[0], {"image": str(p)})
            assert r.status_code == 422 and 'params: "image" must be left out (the server sets it' in r.json()["detail"]
            no_leak(server, r.json()["detail"].partition(", got ")[0])  # what follows echoes the client's own value
    finally:
        for p in planted:
            p.unlink()
    after = snapshot(server)
    assert after["studies"] == before["studies"]


def test_no_reply_names_a_server_path(server):
    sample = requests.post(f"{server.url}/activelearning/boxes_first", timeout=30)
    info = requests.get(f"{server.url}/datastore/image/info", params={"image": server.ids[0]}, timeout=30)
    everything = requests.get(f"{server.url}/datastore/", params={"output": "all"}, timeout=30)
    missing_weights = infer(server, "ct_small", {"scale": 3})
    unreadable = infer(server, file=("scan.png", b"not a png"))
    for r, status in ((sample, 200), (info, 200), (everything, 200), (missing_weights, 404), (unreadable, 415)):
        assert r.status_code == status, r.text
        no_leak(server, r.text)
    assert "<studies>" in sample.text  # the path is there, as a label


def test_failed_and_successful_uploads_leave_no_temp_files(server):
    before = snapshot(server)
    responses = [
        infer(server, file=("broken.png", png(64, 64)[:200])),  # truncated: the header reads, the pixels do not
        infer(server, file=("ok.png", png(64, 64))),
        infer(server, file=("big.png", b"\0" * (3 << 20))),  # over max_upload_mb 2
        requests.put(f"{server.url}/datastore/", files={"file": ("junk.png", b"junk")}, timeout=30),
        requests.put(
            f"{server.url}/datastore/label",
            params={"image": server.ids[0], "tag": "boxes"},
            files={"label": ("b.json", b"{oops")},
            timeout=30,
        ),
        requests.put(f"{server.url}/datastore/", files={"file": ("x." + "p" * 300, b"12")}, timeout=30),
    ]
    assert [r.status_code for r in responses] == [422, 200, 413, 415, 422, 415], [r.text for r in responses]
    unchanged(server, before)


@pytest.mark.parametrize("size, status", [((30000, 30000), 413), ((3000, 3000), 413), ((7, 7), 422), ((1, 1), 422)])
def test_image_size_is_checked_from_the_header_on_infer_and_upload(server, tmp_path, size, status):
    body = png_declaring(tmp_path / "big.png", *size).read_bytes() if size[0] > 1000 else png(*size)
    before = snapshot(server)
    started = time.monotonic()
    r = infer(server, file=("big.png", body))
    assert r.status_code == status and ("px" in r.text or "megapixels" in r.text), r.text
    assert time.monotonic() - started < 10  # refused from the header, nothing decoded
    up = requests.put(
        f"{server.url}/datastore/", params={"image": "sized"}, files={"file": ("s.png", body)}, timeout=30
    )
    assert up.status_code == status, up.text  # the same rule as infer
    unchanged(server, before)


HOSTILE_500S = [
    ("params not JSON", lambda s: infer(s, "ct_small", "{nope"), 422, "not JSON"),
    ("params a JSON list", lambda s: infer(s, "ct_small", "[1, 2]"), 422, "JSON object, not a JSON array"),
    ("unknown infer task", lambda s: requests.post(f"{s.url}/infer/nope", params={"image": "ct_small"}), 404, "nope"),
    ("unknown strategy", lambda s: requests.post(f"{s.url}/activelearning/nope"), 404, "boxes_first"),
    ("unknown trainer", lambda s: requests.post(f"{s.url}/train/nope", json={}), 404, "super_resolution"),
    ("bad output", lambda s: requests.post(f"{s.url}/infer/super_resolution?image=ct_small&output=dicom_seg"),
     422, "output"),
    ("label info a JSON list", lambda s: requests.put(f"{s.url}/datastore/label/info",
     params={"label": s.ids[0], "tag": "boxes"}, data={"info": "[1]"}), 422, "JSON object"),
    ("label info not JSON", lambda s: requests.put(f"{s.url}/datastore/label/info",
     params={"label": s.ids[0], "tag": "boxes"}, data={"info": "{"}), 422, "not JSON"),
    ("image info of an unknown image", lambda s: requests.put(f"{s.url}/datastore/image/info",
     params={"image": "ghost"}, data={"info": "{}"}), 404, "ghost"),
    ("label nested 100000 deep", lambda s: requests.put(f"{s.url}/datastore/label",
     params={"image": s.ids[0], "tag": "boxes"}, files={"label": ("b.json", b"[" * 100000)}), 422, "not JSON"),
    ("a 300 KB train body", lambda s: requests.post(f"{s.url}/train/super_resolution",
     json={"note": "x" * 300_000}), 413, "at most"),
    ("chunked body", lambda s: requests.put(f"{s.url}/datastore/", data=iter([b"a", b"b"])), 411, "Content-Length"),
]  # fmt: skip


@pytest.mark.parametrize("what, call, status, message", HOSTILE_500S, ids=[h[0] for h in HOSTILE_500S])
def test_what_was_a_500_is_a_4xx_with_one_sentence(server, what, call, status, message):
    before = snapshot(server)
    r = call(server)
    assert r.status_code == status and message in r.json()["detail"], r.text
    no_leak(server, r.text)
    unchanged(server, before)
    if "train" in what:
        assert requests.get(f"{server.url}/train/", timeout=30).status_code == 404  # nothing was submitted


def test_the_server_answers_while_it_infers(server):
    """The SR runs in a worker thread: /info answers during a VDSR infer (of the small CT slice here; the
    512x512 radiograph bar is measured by benchmarks/monailabel.py)."""
    done = threading.Event()
    result = {}

    def sr():
        result["r"] = infer(server, "ct_small", {"method": "vdsr"})
        done.set()

    thread = threading.Thread(target=sr)
    thread.start()
    answered_during = 0
    while not done.is_set():
        r = requests.get(f"{server.url}/info/", timeout=30)
        answered_during += r.status_code == 200 and not done.is_set()
        time.sleep(0.05)
    thread.join()
    assert result["r"].status_code == 200 and answered_during >= 3


def test_requests_beyond_the_queue_are_turned_away_not_held(server):
    with ThreadPoolExecutor(6) as pool:
        responses = list(pool.map(lambda _: infer(server, "ct_small", {"method": "vdsr"}), range(6)))
    codes = sorted(r.status_code for r in responses)
    assert set(codes) == {200, 503} and codes.count(200) >= 2, codes
    busy = next(r for r in responses if r.status_code == 503)
    assert busy.headers["retry-after"] == "60" and "busy" in busy.json()["detail"]
    assert infer(server, "ct_small").status_code == 200  # and then it serves again


def test_a_train_request_cannot_hold_the_server(server):
    """MONAI Label's ``run_sync`` would train inside the request; the train task always runs in the background,
    and its status names no server path."""
    started = time.monotonic()
    r = requests.post(
        f"{server.url}/train/super_resolution", params={"run_sync": "true"}, json={"max_epochs": 1}, timeout=60
    )
    assert r.status_code == 200 and time.monotonic() - started < 10
    for _ in range(480):
        status = requests.get(f"{server.url}/train/", timeout=30).json()
        if status["status"] in ("DONE", "ERROR"):
            break
        time.sleep(0.5)
    assert status["status"] == "DONE", status
    no_leak(server, json.dumps(status))


def test_auth_on_closes_every_route_to_anonymous_clients(realm_down):
    """With MONAI Label's auth on (``MONAI_LABEL_AUTH_ENABLE``), this app's own routes answer 401 too."""
    url, studies = realm_down.url, realm_down.studies
    calls = [
        requests.get(f"{url}/info/"),
        requests.post(f"{url}/infer/super_resolution", params={"image": "ct_small"}),
        requests.put(f"{url}/datastore/", files={"file": ("a.png", png(64, 64))}),
        requests.put(f"{url}/datastore/label", params={"image": "ct_small"}, files={"label": ("b.json", b"{}")}),
        requests.post(f"{url}/train/super_resolution", json={}),
        requests.get(f"{url}/datastore/label", params={"label": "ct_small", "tag": "boxes"}),
    ]
    assert [r.status_code for r in calls] == [401] * len(calls), [r.text for r in calls]
    assert ids(studies) == ["ct_small"] and not list((studies / "labels").rglob("*.json"))


def _jwt(header: dict, claims: object, signature: bytes) -> str:
    """A token of these parts, signed or not: what a client may send whatever a realm would issue."""
    import base64

    def b64(data: bytes) -> str:
        return base64.urlsafe_b64encode(data).rstrip(b"=").decode()

    return ".".join((b64(json.dumps(header).encode()), b64(json.dumps(claims).encode()), b64(signature)))


def test_with_the_realm_down_a_bad_token_is_a_401_and_no_token_is_accepted(realm_down):
    """The realm (the Keycloak server whose public key checks the signatures) cannot be reached: no token, a
    token that is not a JWT, an unsigned or HS256 one, an expired one or one without ``exp`` is a 401 all the
    same, decided before the realm is asked (it was a 503: the key was fetched first); a well-formed RS256
    token that cannot be checked is a 503 with ``Retry-After``, never accepted."""
    import jwt
    from cryptography.hazmat.primitives.asymmetric import rsa

    key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    now = int(time.time())
    claims = {"preferred_username": "dr-a", "realm_access": {"roles": ["monailabel-admin"]}, "exp": now + 600}
    rs256 = {"alg": "RS256", "typ": "JWT"}
    signed = jwt.encode(claims, key, algorithm="RS256")
    refused = {
        "no header": None,
        "empty bearer": "Bearer",
        "bearer and a space": "Bearer ",
        "basic": "Basic ZHItYTpzZWNyZXQ=",
        "not a jwt": "Bearer not.a.token",
        "one word": "Bearer abc",
        "not base64": "Bearer a.b.c",
        "header not json": "Bearer " + _jwt(rs256, claims, b"x" * 256).replace(".", "x.", 1),
        "unsigned (alg none)": "Bearer " + _jwt({"alg": "none"}, claims, b""),
        "empty signature": "Bearer " + _jwt(rs256, claims, b""),
        "hs256": "Bearer " + jwt.encode(claims, "a shared secret of at least 32 bytes", algorithm="HS256"),
        "expired": "Bearer " + jwt.encode({**claims, "exp": now - 60}, key, algorithm="RS256"),
        "no exp": "Bearer " + jwt.encode({k: v for k, v in claims.items() if k != "exp"}, key, algorithm="RS256"),
        "claims not an object": "Bearer " + _jwt(rs256, ["admin"], b"x" * 256),
    }
    routes = [
        ("GET", "/info/"),
        ("GET", "/auth/token/valid"),
        ("POST", "/infer/super_resolution?image=ct_small&output=json"),
        ("PUT", "/datastore/label?image=ct_small&tag=boxes"),
    ]

    def call(method: str, path: str, authorization: str | None) -> requests.Response:
        headers = {"Authorization": authorization} if authorization is not None else {}
        return requests.request(method, realm_down.url + path, headers=headers, timeout=30)

    with ThreadPoolExecutor(4) as pool:
        got = {
            (what, path): pool.submit(call, method, path, authorization)
            for what, authorization in refused.items()
            for method, path in routes
        }
        got = {k: f.result() for k, f in got.items()}
    wrong = {k: (r.status_code, r.text[:120]) for k, r in got.items() if r.status_code != 401}
    assert not wrong, wrong
    for method, path in routes:
        r = call(method, path, f"Bearer {signed}")
        assert r.status_code == 503 and r.headers.get("Retry-After"), (path, r.status_code, r.text)
        assert "sign-in service cannot be reached" in r.json()["detail"], r.text
    assert ids(realm_down.studies) == ["ct_small"] and not list((realm_down.studies / "labels").rglob("*.json"))


def test_deletes_when_allowed_refuse_unknown_ids_and_remove_the_files(tmp_path, preloaded):
    """``--allow_delete`` opens MONAI Label's DELETE endpoints; an unknown image or label is a 404 (MONAI
    Label answered 500) and a known image goes with its boxes."""
    studies = tmp_path / "studies"
    studies.mkdir()
    shutil.copy(default_input(), studies / "ct_small.dcm")
    shutil.copy(default_input(), studies / "other.dcm")
    with label_server(
        tmp_path, studies, {"method": "bicubic"}, options=("--allow_delete",), preloaded=preloaded
    ) as url:
        saved = requests.put(
            f"{url}/datastore/label",
            params={"image": "ct_small", "tag": "boxes"},
            files={"label": ("b.json", b'{"markups": []}')},
        )
        assert saved.status_code == 200, saved.text
        for path in (
            "/datastore/image?id=ghost",
            "/datastore/label?id=ghost&tag=boxes",
            "/datastore/label?id=other&tag=boxes",
        ):
            r = requests.delete(url + path, timeout=30)
            assert r.status_code == 404 and ("ghost" in r.text or "other" in r.text), r.text
        assert ids(studies) == ["ct_small", "other"]
        assert requests.delete(f"{url}/datastore/image", params={"id": "ct_small"}, timeout=30).status_code == 200
    assert ids(studies) == ["other"] and not (studies / "labels" / "boxes" / "ct_small.json").exists()


# ------------------------------------------------------------------- hardening round 3 (issue 39, 8-13)


def _detached(field: str, target: str, nrrd: bool = False) -> bytes:
    """A MetaImage or NRRD header of a 64x64 8-bit image whose pixel data is the file ``target``."""
    if nrrd:
        return f"NRRD0004\ntype: uint8\ndimension: 2\nsizes: 64 64\nencoding: raw\n{field}: {target}\n\n".encode()
    head = "ObjectType = Image\nNDims = 2\nDimSize = 64 64\nElementType = MET_UCHAR\n"
    return f"{head}{field} = {target}\n".encode()


DETACHED = {
    "mha naming /etc/passwd": ("x.mha", _detached("ElementDataFile", "/etc/passwd")),
    "mha naming /proc/self/environ": ("x.mha", _detached("ElementDataFile", "/proc/self/environ")),
    "mha naming /dev/stdin": ("x.mha", _detached("ElementDataFile", "/dev/stdin")),
    "mha naming a neighbour": ("x.mha", _detached("ElementDataFile", "tmp_planted.png")),
    "nrrd naming /etc/passwd": ("x.nrrd", _detached("data file", "/etc/passwd", nrrd=True)),
    "nrrd naming ../../etc/passwd": ("x.nrrd", _detached("datafile", "../../etc/passwd", nrrd=True)),
}


def test_a_deflated_dicom_bomb_is_refused_before_it_is_inflated(server, tmp_path):
    """255 KB that inflate to 256 MiB held the only worker for 70-100 s; now a 415 from the first MiBs."""
    from conftest import deflated_dicom

    body = deflated_dicom(tmp_path / "b.dcm", 8192).read_bytes()
    assert len(body) < 512 << 10
    before = snapshot(server)
    started = time.monotonic()
    r = infer(server, file=("b.dcm", body), timeout=60)
    up = requests.put(f"{server.url}/datastore/", params={"image": "bomb"}, files={"file": ("b.dcm", body)}, timeout=60)
    assert [r.status_code, up.status_code] == [415, 415] and "decompression bomb" in r.text + up.text, r.text
    assert time.monotonic() - started < 15
    unchanged(server, before)


def _server_memory(server) -> dict[str, int]:
    """VmRSS and VmHWM (its peak since the last reset) of the server process, in bytes."""
    pid = listening_pid(int(server.url.rsplit(":", 1)[1]))
    with open(f"/proc/{pid}/status") as f:
        fields = dict(line.split(":", 1) for line in f)
    return {"pid": pid, **{k: int(fields[k].split()[0]) << 10 for k in ("VmRSS", "VmHWM")}}


def test_concurrent_deflated_dicom_bombs_cost_the_server_little_memory(server, tmp_path):
    """8 uploads at once of 255 KB that inflate to 128 MiB: each was inflated up to the 96 MiB limit in
    one piece before the 415 (+120 MB for one, +134 MB peak for 8); now they are measured in small steps,
    and the server's peak resident memory grows by less than 40 MB."""
    from conftest import deflated_dicom

    body = deflated_dicom(tmp_path / "b.dcm", 8192).read_bytes()

    def put(i: int) -> requests.Response:
        files = {"file": ("b.dcm", body)}
        return requests.put(f"{server.url}/datastore/", params={"image": f"bomb{i}"}, files=files, timeout=120)

    assert put(99).status_code == 415  # warm: the code paths imported, the allocator's arenas made
    before, snapshot_before = _server_memory(server), snapshot(server)
    with open(f"/proc/{before['pid']}/clear_refs", "w") as f:
        f.write("5")  # resets VmHWM to the current resident size
    with ThreadPoolExecutor(8) as pool:
        replies = list(pool.map(put, range(8)))
    after = _server_memory(server)
    assert [r.status_code for r in replies] == [415] * 8, [r.text for r in replies]
    assert all("decompression bomb" in r.json()["detail"] for r in replies)
    grown = (after["VmHWM"] - before["VmRSS"]) >> 20
    assert grown < 40, f"the server's peak grew by {grown} MB over {before['VmRSS'] >> 20} MB"
    unchanged(server, snapshot_before)


@pytest.mark.parametrize("what", DETACHED)
def test_an_upload_is_read_only_from_its_own_bytes(server, what):
    """A header that names its pixel data file elsewhere (any file the server can read) is refused, on infer
    and on upload, before anything is read or stored."""
    name, body = DETACHED[what]
    before = snapshot(server)
    started = time.monotonic()
    r = infer(server, file=(name, body), timeout=30)
    assert r.status_code == 415 and "separate pixel data file" in r.json()["detail"], r.text
    up = requests.put(
        f"{server.url}/datastore/", params={"image": "detached"}, files={"file": (name, body)}, timeout=30
    )
    assert up.status_code == 415 and "separate pixel data file" in up.json()["detail"], up.text
    assert time.monotonic() - started < 20  # a FIFO or /dev/stdin is never opened
    for r in (r, up):
        assert "root:" not in r.text
        no_leak(server, r.text)
    unchanged(server, before)


def test_deep_info_is_refused_and_an_unreadable_index_does_not_stop_the_server(tmp_path, preloaded):
    """Image info nested 300 deep is a 422; an index left unreadable by hand is set aside at the next start,
    with the images still served and uploads working."""
    studies = tmp_path / "studies"
    studies.mkdir()
    shutil.copy(default_input(), studies / "ct_small.dcm")
    deep = "[" * 300 + "]" * 300
    with label_server(tmp_path, studies, {"method": "bicubic"}, preloaded=preloaded) as url:
        info = {"info": '{"a": ' + deep + "}"}
        r = requests.put(f"{url}/datastore/image/info", params={"image": "ct_small"}, data=info, timeout=30)
        assert r.status_code == 422 and "nested more than" in r.json()["detail"], r.text
        ok = requests.put(f"{url}/datastore/image/info", params={"image": "ct_small"}, data={"info": '{"site": "A"}'})
        assert ok.status_code == 200, ok.text
    index = studies / "datastore_v2.json"
    index.write_text(index.read_text().replace('"site": "A"', '"site": ' + deep))
    (tmp_path / "restart").mkdir()
    with label_server(tmp_path / "restart", studies, {"method": "bicubic"}, preloaded=preloaded) as url:
        assert requests.get(f"{url}/datastore/image", params={"image": "ct_small"}, timeout=30).status_code == 200
        up = requests.put(f"{url}/datastore/", params={"image": "new"}, files={"file": ("n.png", png(64, 64))})
        assert up.status_code == 200, up.text
    aside = list(studies.glob("datastore_v2.json.unreadable-*"))
    assert len(aside) == 1 and deep in aside[0].read_text()
    assert sorted(ids(studies)) == ["ct_small", "new"]


def test_concurrent_uploads_under_one_new_id_store_one_and_refuse_the_others(server):
    bodies = [png(64 + i, 64) for i in range(12)]

    def put(body):
        return requests.put(
            f"{server.url}/datastore/", params={"image": "raced"}, files={"file": ("r.png", body)}, timeout=60
        )

    with ThreadPoolExecutor(12) as pool:
        codes = sorted(r.status_code for r in pool.map(put, bodies))
    try:
        assert codes == [200] + [409] * 11, codes
        kept = Image.open(server.studies / "raced.png").size
        assert kept in {Image.open(io.BytesIO(b)).size for b in bodies}
    finally:
        (server.studies / "raced.png").unlink()


def test_symlinks_in_the_studies_folder_are_not_followed(tmp_path, preloaded):
    studies = tmp_path / "studies"
    studies.mkdir()
    shutil.copy(default_input(), studies / "ct_small.dcm")
    (studies / "passwd.png").symlink_to("/etc/passwd")
    outside = tmp_path / "outside.png"
    (studies / "dangling.png").symlink_to(outside)
    with label_server(tmp_path, studies, {"method": "bicubic"}, preloaded=preloaded) as url:
        listing = requests.get(f"{url}/datastore/", params={"output": "all"}, timeout=30)
        assert listing.status_code == 200 and "passwd" not in listing.text and "outside" not in listing.text
        served = requests.get(f"{url}/datastore/image", params={"image": "passwd"}, timeout=30)
        assert served.status_code == 404 and "root:" not in served.text, served.text
        up = requests.put(f"{url}/datastore/", params={"image": "dangling"}, files={"file": ("d.png", png(64, 64))})
        assert up.status_code == 409, up.text
        assert infer(SimpleNamespace(url=url), "passwd", timeout=30).status_code == 404
    assert not outside.exists() and (studies / "dangling.png").is_symlink()


def test_a_chunked_body_with_a_content_length_is_refused(server):
    """``Content-Length`` together with ``Transfer-Encoding: chunked`` let 96 MB through a 64 KB route."""
    import socket
    from urllib.parse import urlparse

    url = urlparse(server.url)
    chunk = b"x" * (1 << 16)
    body = b"".join(b"%x\r\n%s\r\n" % (len(chunk), chunk) for _ in range(32)) + b"0\r\n\r\n"
    request = (
        b"PUT /datastore/image/info?image=%s HTTP/1.1\r\nHost: x\r\nContent-Length: 10\r\n"
        b"Transfer-Encoding: chunked\r\nContent-Type: application/x-www-form-urlencoded\r\n\r\n"
    ) % server.ids[0].encode()
    before = snapshot(server)
    with socket.create_connection((url.hostname, url.port), timeout=30) as sock:
        sock.sendall(request)
        try:
            sock.sendall(body)
        except OSError:
            pass  # the server may close once it has answered
        reply = b""
        while b"no Transfer-Encoding" not in reply:  # the head and the body may come in separate reads
            chunk = sock.recv(4096)
            if not chunk:
                break
            reply += chunk
    reply = reply.decode("latin-1")
    assert reply.startswith("HTTP/1.1 411") and "no Transfer-Encoding" in reply, reply[:300]
    unchanged(server, before)


def test_odd_digests_and_seeds_are_4xx_not_500(server):
    for method in ("HEAD", "GET"):
        r = requests.request(
            method, f"{server.url}/datastore/image", params={"image": server.ids[0], "check_sum": "MD4:00"}, timeout=30
        )
        assert r.status_code == 422, (method, r.status_code)
    r = infer(server, server.ids[0], {"method": "sr3", "seed": 2**80}, timeout=30)
    assert r.status_code == 422 and "seed must be at most" in r.json()["detail"], r.text


def test_a_stored_boxes_file_comes_back_as_it_was_saved(server):
    """A finding named like a server folder is the annotator's text: the label download is not scrubbed."""
    from monai_sr_bundle.data.markups import boxes_to_markups
    from monai_sr_bundle.data.readers import read_image

    image = read_image(server.studies / "ct_small.dcm")
    doc = json.dumps(boxes_to_markups(np.array([[10.0, 10.0, 40.0, 40.0]]), [str(server.studies)], image.affine))
    saved = requests.put(
        f"{server.url}/datastore/label",
        params={"image": "ct_small", "tag": "boxes"},
        files={"label": ("b.json", doc.encode())},
        timeout=30,
    )
    assert saved.status_code == 200, saved.text
    try:
        got = requests.get(f"{server.url}/datastore/label", params={"label": "ct_small", "tag": "boxes"}, timeout=30)
        assert got.status_code == 200 and got.content == doc.encode()
    finally:
        (server.studies / "labels" / "boxes" / "ct_small.json").unlink()


def test_an_abandoned_sr_request_frees_the_worker(server):
    """A client asks for sr3 with 1000 steps and 8 samples (tens of minutes on this CPU), then disconnects:
    the work stops at its next sampler step, so the next client's request is served at once."""
    import socket
    from urllib.parse import urlparse

    url = urlparse(server.url)
    prepared = requests.Request(
        "POST",
        f"{server.url}/infer/super_resolution",
        params={"output": "image"},
        data={"params": json.dumps({"method": "sr3", "steps": 1000, "samples": 8, "sampler": "ddpm"})},
        files={"file": ("a.png", png(64, 64))},
    ).prepare()
    head = f"POST {prepared.path_url} HTTP/1.1\r\nHost: x\r\n" + "".join(
        f"{k}: {v}\r\n" for k, v in prepared.headers.items()
    )
    before = snapshot(server)
    with socket.create_connection((url.hostname, url.port), timeout=30) as sock:
        sock.sendall(head.encode() + b"\r\n" + prepared.body)
        time.sleep(3)  # the SR is under way
    started = time.monotonic()
    r = infer(server, server.ids[0], timeout=120)
    assert r.status_code == 200, r.text
    assert time.monotonic() - started < 30
    unchanged(server, before)


def test_half_sent_requests_are_closed_and_the_server_keeps_answering(server):
    """A client that sends half a header, and one whose body stalls, are disconnected (lib/timeouts.py:
    10 s for headers, 30 s of a stalled body); meanwhile and after, /info/ answers."""
    import socket
    from urllib.parse import urlparse

    header_s, body_idle_s = 10, 30  # lib/timeouts.py
    url = urlparse(server.url)
    half_header = socket.create_connection((url.hostname, url.port), timeout=120)
    half_header.sendall(b"GET /info/ HTTP/1.1\r\nHost: x\r\n")
    stalled_body = socket.create_connection((url.hostname, url.port), timeout=120)
    stalled_body.sendall(
        b"PUT /datastore/image/info?image=%s HTTP/1.1\r\nHost: x\r\nContent-Length: 1000\r\n"
        b"Content-Type: application/x-www-form-urlencoded\r\n\r\ninfo=%%7B" % server.ids[0].encode()
    )
    started = time.monotonic()
    try:
        assert requests.get(f"{server.url}/info/", timeout=10).status_code == 200
        assert half_header.recv(1024) == b""  # closed by the server
        assert header_s - 1 < time.monotonic() - started < header_s + 10
        assert stalled_body.recv(1024) == b""
        assert body_idle_s - 1 < time.monotonic() - started < body_idle_s + 15
        assert requests.get(f"{server.url}/info/", timeout=10).status_code == 200
    finally:
        half_header.close()
        stalled_body.close()


def test_a_realm_token_is_accepted_and_a_realm_that_is_down_is_a_503(tmp_path, realm_down, preloaded):
    """With auth on, a token the realm signed (RS256) opens the routes its roles allow (MONAI Label 0.8.5
    refused every one: it called jwt.decode without algorithms); a token signed by another key, or an HS256
    token keyed with the realm's public key, is a 401; when the realm cannot be reached, a 503, not a 500."""
    import base64
    import hashlib
    import hmac
    import http.server

    import jwt
    from cryptography.hazmat.primitives import serialization
    from cryptography.hazmat.primitives.asymmetric import rsa

    key, other = (rsa.generate_private_key(public_exponent=65537, key_size=2048) for _ in range(2))
    public = key.public_key().public_bytes(serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo)
    body = json.dumps({"realm": "hospital", "public_key": base64.b64encode(public).decode()}).encode()

    class Realm(http.server.BaseHTTPRequestHandler):
        def do_GET(self):  # noqa: N802 (the handler's own name)
            self.send_response(200)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, *args):
            pass

    claims = {
        "preferred_username": "dr-a",
        "realm_access": {"roles": ["monailabel-user", "monailabel-annotator"]},
        "exp": int(time.time()) + 600,
    }
    token = jwt.encode(claims, key, algorithm="RS256")
    forged = jwt.encode(claims, other, algorithm="RS256")
    pem = key.public_key().public_bytes(serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo)

    def b64(data: bytes) -> bytes:
        return base64.urlsafe_b64encode(data).rstrip(b"=")

    signing = b64(b'{"alg":"HS256","typ":"JWT"}') + b"." + b64(json.dumps(claims).encode())
    confused = (signing + b"." + b64(hmac.new(pem, signing, hashlib.sha256).digest())).decode()  # alg confusion
    studies = tmp_path / "studies"
    studies.mkdir()
    shutil.copy(default_input(), studies / "ct_small.dcm")
    realm = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Realm)
    threading.Thread(target=realm.serve_forever, daemon=True).start()
    env = {"MONAI_LABEL_AUTH_ENABLE": "true", "MONAI_LABEL_AUTH_REALM_URI": f"http://127.0.0.1:{realm.server_port}/r"}
    try:
        with label_server(
            tmp_path, studies, {"method": "bicubic"}, env=env, ready_status=401, preloaded=preloaded
        ) as url:

            def get(t):
                return requests.get(f"{url}/info/", headers={"Authorization": f"Bearer {t}"}, timeout=30)

            assert get(token).status_code == 200, get(token).text
            sr = requests.post(
                f"{url}/infer/super_resolution",
                params={"image": "ct_small", "output": "json"},
                headers={"Authorization": f"Bearer {token}"},
                timeout=120,
            )
            assert sr.status_code == 200, sr.text
            assert [get(t).status_code for t in (forged, confused, "not.a.token")] == [401, 401, 401]
            train = requests.post(
                f"{url}/train/super_resolution", json={}, headers={"Authorization": f"Bearer {token}"}, timeout=30
            )
            assert train.status_code == 403  # an annotator is no admin
    finally:
        realm.shutdown()
    r = requests.get(f"{realm_down.url}/info/", headers={"Authorization": f"Bearer {token}"}, timeout=30)
    assert r.status_code == 503 and "sign-in service cannot be reached" in r.json()["detail"], r.text
