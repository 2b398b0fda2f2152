"""``python -m leukolab.serving``: serve the prediction API in the foreground (as ``leukolab serve`` does)."""

import argparse

from leukolab.serving.foreground import serve_forever
from leukolab.serving.options import add_serve_arguments


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m leukolab.serving", description="Serve the leukolab prediction API.")
    add_serve_arguments(parser)
    args = parser.parse_args(argv)
    serve_forever(model_uri=args.model_uri, host=args.host, port=args.port, model_poll_seconds=args.model_poll_seconds,
                  insecure=args.insecure)


if __name__ == "__main__":
    main()
