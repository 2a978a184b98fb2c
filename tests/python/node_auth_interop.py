"""The Python half of the SuperNode signature interop test, using flwr 1.28.0's own primitives.

    node_auth_interop.py sign CURVE OUTDIR...   # CURVE: P-256 | P-384 | P-521
        writes, into each OUTDIR, `key` (OpenSSH private key), `key.pem` (the public key exactly
        as the Python SuperNode sends it), `timestamp` and `signature` (DER), signed the way the
        Python SuperNode signs every Fleet call.

    node_auth_interop.py verify DIR...
        checks `DIR/pem`, `DIR/timestamp` and `DIR/signature` the way the Python SuperLink does
        (signature, then the time window) and prints one line per DIR: `verified`,
        `Invalid signature` or `Invalid timestamp`.
"""

import datetime
import sys
from pathlib import Path

from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec

from flwr.common import now
from flwr.common.constant import SYSTEM_TIME_TOLERANCE, TIMESTAMP_TOLERANCE
from flwr.supercore.primitives.asymmetric import (
    bytes_to_public_key,
    public_key_to_bytes,
    sign_message,
    verify_signature,
)

CURVES = {"P-256": ec.SECP256R1, "P-384": ec.SECP384R1, "P-521": ec.SECP521R1}


def sign(curve: str, outdir: Path) -> None:
    key = ec.generate_private_key(CURVES[curve]())
    outdir.mkdir(parents=True, exist_ok=True)
    (outdir / "key").write_bytes(
        key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.OpenSSH,
            serialization.NoEncryption(),
        )
    )
    (outdir / "key.pem").write_bytes(public_key_to_bytes(key.public_key()))
    timestamp = now().isoformat()
    (outdir / "timestamp").write_text(timestamp)
    (outdir / "signature").write_bytes(sign_message(key, timestamp.encode("ascii")))


def verify(directory: Path) -> str:
    public_key = bytes_to_public_key((directory / "pem").read_bytes())
    timestamp = (directory / "timestamp").read_text()
    signature = (directory / "signature").read_bytes()
    if not verify_signature(public_key, timestamp.encode("ascii"), signature):
        return "Invalid signature"
    diff = datetime.datetime.now(datetime.timezone.utc) - datetime.datetime.fromisoformat(timestamp)
    if not -SYSTEM_TIME_TOLERANCE < diff.total_seconds() < TIMESTAMP_TOLERANCE + SYSTEM_TIME_TOLERANCE:
        return "Invalid timestamp"
    return "verified"


if __name__ == "__main__":
    if sys.argv[1] == "sign":
        for out in sys.argv[3:]:
            sign(sys.argv[2], Path(out))
    elif sys.argv[1] == "verify":
        for d in sys.argv[2:]:
            print(verify(Path(d)))
    else:
        sys.exit(f"unknown command {sys.argv[1]!r}")
