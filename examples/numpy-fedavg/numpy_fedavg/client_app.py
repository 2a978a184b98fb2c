"""ClientApp: each training round adds `step` to every weight; evaluation reports the mean."""

import time

import numpy as np
from flwr.app import ArrayRecord, Context, Message, MetricRecord, RecordDict
from flwr.clientapp import ClientApp

app = ClientApp()


@app.train()
def train(msg: Message, context: Context) -> Message:
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
    weights = msg.content["arrays"].to_numpy_ndarrays()[0]
    metrics = MetricRecord({"num-examples": 1, "eval-mean": float(weights.mean())})
    return Message(content=RecordDict({"metrics": metrics}), reply_to=msg)
