#!/usr/bin/env python3
"""Download MNIST and/or Fashion-MNIST IDX files into DIR/<name>/ for flight_parsl.

Usage:
    python download_data.py --root DIR [--dataset mnist|fashion_mnist|all]
        [--base-url URL] [--no-verify | --md5-file FILE] [--timeout SECONDS]
        [--no-torchvision]

A thin command line over ``flight_parsl.data.download``. With the default mirrors,
torchvision downloads the files (into DIR/MNIST/raw/, DIR/FashionMNIST/raw/) when it
imports; otherwise, or if it fails, plain urllib does. Either way the checksums are
verified. Progress goes to stdout; a failure prints one line to stderr and exits
with status 1.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

_REPO = Path(__file__).resolve().parent
if str(_REPO) not in sys.path:
    sys.path.insert(0, str(_REPO))

from flight_parsl.data.download import download_dataset, downloadable_names, read_checksums  # noqa: E402
from flight_parsl.core.errors import FlightParslError  # noqa: E402


def _parser() -> argparse.ArgumentParser:
    """Build the argument parser."""
    parser = argparse.ArgumentParser(description="Download the IDX files of MNIST / Fashion-MNIST.")
    parser.add_argument(
        "--root", required=True, help="data root; files go to ROOT/<dataset>/ (torchvision: ROOT/MNIST/raw/ ...)"
    )
    parser.add_argument("--dataset", default="all", choices=[*downloadable_names(), "all"])
    parser.add_argument("--base-url", help="mirror to use instead of the defaults (http(s):// or file://)")
    checks = parser.add_mutually_exclusive_group()
    checks.add_argument("--no-verify", action="store_true", help="skip the MD5 check")
    checks.add_argument("--md5-file", help="md5sum-style file of checksums replacing the known ones")
    parser.add_argument("--timeout", type=float, default=60.0, help="seconds before a stalled connection fails")
    parser.add_argument(
        "--no-torchvision", action="store_true", help="download with plain urllib even if torchvision imports"
    )
    parser.add_argument("--dry-run", action="store_true", help="print what would be fetched, fetch nothing")
    return parser


def main(argv: list[str] | None = None) -> int:
    """Run the command line; return the exit status."""
    args = _parser().parse_args(argv)
    names = downloadable_names() if args.dataset == "all" else [args.dataset]
    if args.dry_run:
        for name in names:
            print(f"{name}: would be fetched into {args.root} from {args.base_url or 'the default mirrors'}")
        return 0
    try:
        checksums = read_checksums(args.md5_file) if args.md5_file else None
        for name in names:
            paths = download_dataset(
                name,
                args.root,
                base_url=args.base_url,
                checksums=checksums,
                verify=not args.no_verify,
                timeout=args.timeout,
                log=print,
                use_torchvision=not args.no_torchvision,
            )
            print(f"{name}: {len(paths)} files ready in {paths[0].parent}")
    except FlightParslError as exc:
        message = " ".join(str(exc).splitlines())
        print(f"download_data.py: error: {message}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print("download_data.py: interrupted", file=sys.stderr)
        return 130
    return 0


if __name__ == "__main__":
    sys.exit(main())
