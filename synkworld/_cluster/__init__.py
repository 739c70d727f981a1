"""Several processes on one map: the cluster's logic, over any `BusBackend`."""
