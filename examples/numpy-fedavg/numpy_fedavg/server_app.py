"""ServerApp: FedAvg from a known model; after R rounds every weight must have grown by R * step.

The initial weights are `i % 97` (exact in float32), so every array chunk differs and a swapped,
lost or corrupted chunk changes the result. With one, two or four nodes FedAvg's average is exact
and the final model equals the prediction bit for bit (`exact=True`); with other counts the
average may differ in the last bit, and the check allows 1e-3. The last line of the output is
`FEDAVG-CHECK OK ...` with a SHA-256 of the final model; otherwise the app raises, and the run ends
`finished:failed`.
"""

import hashlib

import numpy as np
from flwr.app import ArrayRecord, ConfigRecord, Context
from flwr.serverapp import Grid, ServerApp
from flwr.serverapp.strategy import FedAvg

app = ServerApp()


@app.main()
def main(grid: Grid, context: Context) -> None:
    rounds = int(context.run_config["num-server-rounds"])
    size = int(context.run_config["model-size"])
    nodes = int(context.run_config["min-nodes"])
    step = float(context.run_config["step"])
    if size <= 0 or rounds <= 0 or nodes <= 0:
        raise ValueError(f"model-size, num-server-rounds and min-nodes must be positive (got {size}, {rounds}, {nodes})")

    strategy = FedAvg(
        fraction_train=1.0,
        fraction_evaluate=1.0,
        min_train_nodes=nodes,
        min_evaluate_nodes=nodes,
        min_available_nodes=nodes,
    )
    start = (np.arange(size, dtype=np.int64) % 97).astype(np.float32)
    initial = ArrayRecord([start])
    result = strategy.start(
        grid=grid,
        initial_arrays=initial,
        num_rounds=rounds,
        train_config=ConfigRecord({"step": step}),
    )

    for rnd, metrics in sorted(result.train_metrics_clientapp.items()):
        print(f"FEDAVG-ROUND {rnd} train-mean={metrics['train-mean']}", flush=True)
    final = result.arrays.to_numpy_ndarrays()[0]
    expected = start + np.float32(rounds * step)
    if final.shape != (size,) or not np.allclose(final, expected, rtol=0.0, atol=1e-3):
        differ = int(np.sum(np.abs(final - expected) > 1e-3)) if final.shape == expected.shape else "all"
        raise ValueError(
            f"FEDAVG-CHECK FAILED: expected start + {rounds * step}, got shape {final.shape}, "
            f"{differ} weights differ"
        )
    exact = bool(np.array_equal(final, expected))
    digest = hashlib.sha256(final.tobytes()).hexdigest()
    print(
        f"FEDAVG-CHECK OK rounds={rounds} size={size} nodes={nodes} "
        f"increase={rounds * step} exact={exact} sha256={digest}",
        flush=True,
    )
