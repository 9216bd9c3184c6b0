"""Start the monai-sr MONAI Label server as a hospital should run it: MONAI Label's server and this app,
behind the app's gateway (``lib/gateway.py``), secure by default.

    .venv/bin/python monailabel_app/serve.py --studies /path/to/studies [--host 127.0.0.1] [--port 8000] \\
        [--conf method vdsr --conf scale 4 ...] [--cors_origin https://viewer.hospital.example] [--allow_delete]

Defaults: loopback only; no CORS; MONAI Label's sessions, delete, logs, model-upload and other stock
endpoints closed; temp files in a private folder (``<app>/tmp``, emptied at start); the train subprocesses
import nothing from the working folder (``launch.make_safe``). Authentication is MONAI Label's
(``MONAI_LABEL_AUTH_ENABLE=true`` and the ``MONAI_LABEL_AUTH_*`` settings, a Keycloak realm). See
docs/monailabel.md, Deployment.
"""

from __future__ import annotations

import argparse
import os
import shutil
import sys
import tempfile
from pathlib import Path

from monai_sr_bundle.launch import make_safe

APP_DIR = Path(__file__).resolve().parent


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--studies", required=True, help="the studies folder (or a DICOMweb root URL)")
    p.add_argument("--host", default="127.0.0.1", help="address to listen on (default: loopback only)")
    p.add_argument("--port", type=int, default=8000)
    p.add_argument("--conf", nargs=2, action="append", default=[], metavar=("KEY", "VALUE"), help="app settings")
    p.add_argument("--cors_origin", action="append", default=[], help="a web origin allowed to call the server")
    p.add_argument("--allow_delete", action="store_true", help="serve MONAI Label's image and label DELETE")
    p.add_argument("--ssl_keyfile")
    p.add_argument("--ssl_certfile")
    p.add_argument("--log_level", default="info")
    return p


def private_tmp() -> str:
    """A fresh temp folder for this server only: uploads and results never sit in the shared /tmp, and what
    a crash left behind is gone at the next start."""
    folder = APP_DIR / "tmp"
    shutil.rmtree(folder, ignore_errors=True)
    folder.mkdir(mode=0o700)
    os.environ["TMPDIR"] = str(folder)  # the train subprocesses too
    tempfile.tempdir = None
    return str(folder)


def main(argv: list[str] | None = None) -> None:
    args = parser().parse_args(argv)
    system_tmp = tempfile.gettempdir()
    tmp = private_tmp()
    from monailabel.config import settings
    from monailabel.main import Main

    settings.MONAI_LABEL_SESSIONS = False  # exported with the other settings below
    ml_args = argparse.Namespace(app=str(APP_DIR), studies=args.studies, conf=args.conf, port=args.port, dryrun=False)
    launcher = Main()
    launcher.start_server_validate_args(ml_args)
    launcher.start_server_init_settings(ml_args)  # MONAI Label's settings, exported for its train subprocesses
    make_safe(os.environ)  # which run `python -m` in this folder, with PYTHONPATH ":<app>": nothing from it

    import uvicorn
    from monailabel.app import app as stock
    from monailabel.utils.others.generic import init_log_config

    import monai_sr_bundle
    from lib import auth, gateway
    from lib.timeouts import TimedH11Protocol

    conf = dict(args.conf)
    private = {
        ml_args.studies: "<studies>",
        conf.get("model_dir") or str(APP_DIR / "model"): "<model>",
        str(APP_DIR): "<app>",
        tmp: "<tmp>",
        system_tmp: "<tmp>",
        sys.prefix: "<python>",
        str(Path(monai_sr_bundle.__file__).resolve().parents[1]): "<monai-sr>",
        str(Path.home()): "~",
    }
    if args.host not in ("127.0.0.1", "localhost", "::1") and not settings.MONAI_LABEL_AUTH_ENABLE:
        print(f"WARNING: serving on {args.host} without authentication; see docs/monailabel.md, Deployment.")
    auth.install()  # tokens checked with RS256, an unreachable realm a 503 (lib/auth.py)
    app = gateway.build(stock, conf, args.cors_origin, args.allow_delete, private)
    uvicorn.run(
        app,
        host=args.host,
        port=args.port,
        log_level=args.log_level,
        log_config=init_log_config(None, str(APP_DIR), "app.log"),
        ssl_keyfile=args.ssl_keyfile,
        ssl_certfile=args.ssl_certfile,
        http=TimedH11Protocol,  # deadlines on reading a request (lib/timeouts.py)
    )


if __name__ == "__main__":
    main()
