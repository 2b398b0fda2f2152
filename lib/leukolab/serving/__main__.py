"""``python -m leukolab.serving``: serve the prediction API in the foreground."""

import argparse

from leukolab.serving.launch import serve_forever


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m leukolab.serving", description="Serve the leukolab prediction API.")
    parser.add_argument("--host", default="127.0.0.1", help="interface to listen on (default: %(default)s)")
    parser.add_argument("--port", type=int, default=8000, help="port to listen on (default: %(default)s)")
    parser.add_argument("--model-uri", help="MLflow model URI (default: $LEUKOLAB_MODEL_URI or models:/leukolab@champion)")
    args = parser.parse_args(argv)
    serve_forever(model_uri=args.model_uri, host=args.host, port=args.port)


if __name__ == "__main__":
    main()
