"""ServerApp: FedAvg from a zero model; after R rounds every weight must equal R * step.

The last line of its output is `FEDAVG-CHECK OK ...` when the final model is the predicted one;
otherwise the app raises, and the run ends `finished:failed`.
"""

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

    strategy = FedAvg(
        fraction_train=1.0,
        fraction_evaluate=1.0,
        min_train_nodes=nodes,
        min_evaluate_nodes=nodes,
        min_available_nodes=nodes,
    )
    initial = ArrayRecord([np.zeros(size, dtype=np.float32)])
    result = strategy.start(
        grid=grid,
        initial_arrays=initial,
        num_rounds=rounds,
        train_config=ConfigRecord({"step": step}),
    )

    for rnd, metrics in sorted(result.train_metrics_clientapp.items()):
        print(f"FEDAVG-ROUND {rnd} train-mean={metrics['train-mean']}", flush=True)
    final = result.arrays.to_numpy_ndarrays()[0]
    expected = np.float32(rounds * step)
    if final.shape != (size,) or not np.all(final == expected):
        raise ValueError(
            f"FEDAVG-CHECK FAILED: expected every weight == {expected}, "
            f"got mean {float(final.mean())} over shape {final.shape}"
        )
    print(
        f"FEDAVG-CHECK OK rounds={rounds} size={size} nodes={nodes} "
        f"final-mean={float(final.mean())} expected={float(expected)}",
        flush=True,
    )
