"""Serve the app: python -m ldvc_d2.app (or make app), then open http://127.0.0.1:7860.

    python -m ldvc_d2.app                                   # the methods that can run here
    python -m ldvc_d2.app --port 7861 --method "LDVC=configs/demo.yaml@output/demo/model_final.pth"

Without --method the page offers CLIPtrase and frozen CLIP on the shapes CLIP (training-free), the
ViT CLIPtrase configs when their CLIP weights are cached, and each trained method whose
<OUTPUT_DIR>/model_final.pth exists (LDVC after make demo). It listens on 127.0.0.1 only unless
--allow-remote is given. Uploads, previews and results live in a private temporary folder: an upload
is deleted as soon as it is read, results after 5 minutes, the folder when the server stops.
"""
import argparse
import ipaddress
import logging
import os
import shutil
import signal
import sys
import tempfile
from typing import List, Optional

__all__ = ["get_parser", "main"]


def get_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m ldvc_d2.app", description=__doc__.split("\n\n")[0],
                                     formatter_class=argparse.RawDescriptionHelpFormatter,
                                     epilog="\n\n".join(__doc__.split("\n\n")[1:]))
    parser.add_argument("--host", default="127.0.0.1", help="address to listen on (default 127.0.0.1)")
    parser.add_argument("--port", type=int, default=7860, help="port (default 7860)")
    parser.add_argument("--allow-remote", action="store_true",
                        help="allow a --host other than a loopback address (the page is then reachable from "
                             "other machines: anyone who reaches it can run the models)")
    parser.add_argument("--method", action="append", default=[], metavar="NAME=CONFIG[@WEIGHTS]",
                        help="offer this method (repeatable); replaces the default list")
    parser.add_argument("--device", default="cpu", help="device the models run on (default cpu)")
    parser.add_argument("--max-upload-mb", type=float, default=20, help="largest upload in MiB (default 20)")
    parser.add_argument("--max-pixels", type=int, default=16_000_000,
                        help="largest image, width x height (default 16,000,000)")
    parser.add_argument("--max-classes", type=int, default=200, help="most classes per vocabulary (default 200, "
                                                                     "at most 255)")
    return parser


def check_host(host: str, allow_remote: bool) -> None:
    """Refuse a non-loopback address without ``--allow-remote``."""
    try:
        loopback = host == "localhost" or ipaddress.ip_address(host).is_loopback
    except ValueError:
        loopback = False
    if not loopback and not allow_remote:
        raise SystemExit(f"--host {host} is not a loopback address: the page would be reachable from other "
                         "machines. Add --allow-remote to do that on purpose.")


def main(argv: Optional[List[str]] = None) -> int:
    args = get_parser().parse_args(argv)
    check_host(args.host, args.allow_remote)
    if not 1 <= args.max_classes <= 255:
        raise SystemExit("--max-classes must be in 1..255 (the label map is 8-bit).")
    root = tempfile.mkdtemp(prefix="ldvc_d2_app-")
    signal.signal(signal.SIGTERM, _interrupt)  # `kill` stops the server as Ctrl-C does, removing ``root``
    # Gradio reads these when it is imported: its uploads and served files go to our folder, no analytics.
    os.environ["GRADIO_TEMP_DIR"] = os.path.join(root, "gradio")
    os.environ.setdefault("GRADIO_ANALYTICS_ENABLED", "False")
    try:
        return _serve(args, root)
    finally:
        shutil.rmtree(root, ignore_errors=True)


def _interrupt(signum, frame) -> None:
    raise KeyboardInterrupt


def _serve(args: argparse.Namespace, root: str) -> int:
    from detectron2.utils.logger import setup_logger

    import ldvc_d2  # noqa: F401  (detectron2 shims, dataset registrations)
    from .inputs import Limits
    from .methods import ModelCache, default_methods, parse_method
    from .page import build_page

    setup_logger(name="ldvc_d2")
    logger = logging.getLogger("ldvc_d2.app")
    methods = [parse_method(spec) for spec in args.method] or default_methods()
    names = [m.name for m in methods]
    if len(set(names)) != len(names):
        raise SystemExit(f"--method names must differ: {names}")
    for m in methods:
        logger.info(f"Offering '{m.name}': config {m.config}, weights {m.weights or 'none (training-free)'}")
    limits = Limits(int(args.max_upload_mb * 2**20), args.max_pixels, args.max_classes)
    logger.info(f"Uploads and results live in {root} (removed when the server stops).")
    results = os.path.join(root, "results")
    os.makedirs(results)
    page = build_page(methods, ModelCache(args.device), limits, results, os.environ["GRADIO_TEMP_DIR"])
    page.queue(default_concurrency_limit=1, max_size=32)
    import gradio as gr

    theme = gr.themes.Default(font=["ui-sans-serif", "system-ui", "sans-serif"],
                              font_mono=["ui-monospace", "monospace"])  # no web fonts: the page works offline
    page.launch(server_name=args.host, server_port=args.port, share=False, show_error=False, ssr_mode=False,
                max_file_size=limits.max_bytes, allowed_paths=[results], theme=theme, quiet=False)
    return 0


if __name__ == "__main__":
    sys.exit(main())
