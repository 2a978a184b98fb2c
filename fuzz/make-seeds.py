"""Writes the seed corpora of the fuzz targets (run with the tests' venv, which has flwr 1.28.0):

    .venv/bin/python fuzz/make-seeds.py

Each seed is something a real peer sends: Flower's own protobuf classes encode the messages.
"""

import hashlib
import io
import pathlib
import subprocess
import tempfile
import time
import zipfile

from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec
from flwr.proto.appio_pb2 import PushAppMessagesRequest
from flwr.proto.fleet_pb2 import PushMessagesRequest
from flwr.proto.message_pb2 import Message, Metadata, ObjectTree
from flwr.proto.node_pb2 import Node
from flwr.proto.recorddict_pb2 import RecordDict

root = pathlib.Path(__file__).parent / "corpus"


def write(target: str, name: str, data: bytes) -> None:
    d = root / target
    d.mkdir(parents=True, exist_ok=True)
    (d / name).write_bytes(data)


def obj(kind: str, children: list[bytes], body: bytes) -> bytes:
    head = f"{kind} {','.join(c.hex() for c in children)} {len(body)}".encode()
    return head + b"\0" + body


def oid(content: bytes) -> bytes:
    return hashlib.sha256(content).digest()


chunk = obj("ArrayChunk", [], b"\x93NUMPY\x01\x00v\x00{'descr': '<f4'}" + b"\0" * 16)
array = obj("Array", [oid(chunk)], b'{"arraychunk_ids": [0]}')
record = obj("ArrayRecord", [oid(array)], b'{"w": 0}')
message = obj("Message", [oid(record)], b"\x0a\x00")
for name, content in [("chunk", chunk), ("array", array), ("record", record), ("message", message)]:
    write("object_content", name, content)

tree = ObjectTree(
    object_id=oid(message).hex(),
    children=[ObjectTree(object_id=oid(record).hex(), children=[ObjectTree(object_id=oid(array).hex())])],
)
write("object_tree", "message", tree.SerializeToString())
write("object_tree", "leaf", ObjectTree(object_id="ab" * 32).SerializeToString())

metadata = Metadata(
    run_id=7,
    message_id=oid(message).hex(),
    src_node_id=42,
    dst_node_id=1,
    reply_to_message_id="cd" * 32,
    group_id="1",
    ttl=600.0,
    message_type="train",
    created_at=time.time(),
)
msg = Message(metadata=metadata, content=RecordDict())
fleet = PushMessagesRequest(
    node=Node(node_id=42), messages_list=[msg], message_object_trees=[tree], clientapp_runtime_list=[1.5]
)
write("fleet_requests", "fleet-push", b"\x00" + fleet.SerializeToString())
appio = PushAppMessagesRequest(token="t" * 256, run_id=7, messages_list=[msg], message_object_trees=[tree])
write("fleet_requests", "appio-push", b"\x01" + appio.SerializeToString())

pyproject = """[build-system]
requires = ["hatchling"]
[project]
name = "numpy-fedavg"
version = "1.0.0"
[tool.flwr.app]
publisher = "flower-rs"
[tool.flwr.app.components]
serverapp = "app.server:app"
clientapp = "app.client:app"
[tool.flwr.app.config]
num-server-rounds = 3
step = 1.0
nested.value = "x"
"""
buf = io.BytesIO()
with zipfile.ZipFile(buf, "w", zipfile.ZIP_DEFLATED) as z:
    z.writestr("pyproject.toml", pyproject)
    z.writestr("app/__init__.py", "")
write("fab", "app", buf.getvalue())

for i, text in enumerate(
    ["partition-id=0 num-partitions=2", "name='a b' lr=0.1 ok=true", 'x.y=1 x.z="s"', ""]
):
    write("node_config", f"pairs-{i}", text.encode())

for curve in (ec.SECP256R1(), ec.SECP384R1(), ec.SECP521R1()):
    key = ec.generate_private_key(curve)
    pem = key.public_key().public_bytes(
        serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
    )
    write("keys", f"pem-{curve.name}", pem)
with tempfile.TemporaryDirectory() as d:
    path = pathlib.Path(d) / "key"
    subprocess.run(["ssh-keygen", "-q", "-t", "ecdsa", "-b", "384", "-N", "", "-f", str(path)], check=True)
    write("keys", "openssh-p384", path.read_bytes())
