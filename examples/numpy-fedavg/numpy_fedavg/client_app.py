"""ClientApp: each training round adds `step` to every weight; evaluation reports the mean.

Each message runs in a fresh process (Flower's rule, which our SuperNode's fork launcher keeps):
the module-level count below is 1 in every message, and says so on the ClientApp's output.
"""

import os
import time

import numpy as np
from flwr.app import ArrayRecord, Context, Message, MetricRecord, RecordDict
from flwr.clientapp import ClientApp

app = ClientApp()

CALLS = 0


def count_call() -> None:
    global CALLS
    CALLS += 1
    print(f"CLIENTAPP-CALLS {CALLS} pid={os.getpid()}", flush=True)


@app.train()
def train(msg: Message, context: Context) -> Message:
    count_call()
    step = float(msg.content["config"]["step"])
    time.sleep(float(context.run_config.get("client-delay", 0.0)))
    weights = msg.content["arrays"].to_numpy_ndarrays()[0]
    updated = (weights + np.float32(step)).astype(np.float32)
    # Every node counts as one example, so FedAvg is the plain mean of the updates.
    metrics = MetricRecord({"num-examples": 1, "train-mean": float(updated.mean())})
    content = RecordDict({"arrays": ArrayRecord([updated]), "metrics": metrics})
    return Message(content=content, reply_to=msg)


@app.evaluate()
def evaluate(msg: Message, context: Context) -> Message:
    count_call()
    weights = msg.content["arrays"].to_numpy_ndarrays()[0]
    metrics = MetricRecord({"num-examples": 1, "eval-mean": float(weights.mean())})
    return Message(content=RecordDict({"metrics": metrics}), reply_to=msg)
