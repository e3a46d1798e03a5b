"""Lightning tasks, metrics, data and callbacks built on nncf_ext (which never imports this package)."""
