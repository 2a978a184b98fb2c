"""A FedAvg app over numpy arrays whose final model can be predicted exactly."""
