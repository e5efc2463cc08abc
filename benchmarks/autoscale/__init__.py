"""The autoscaling benchmark: a load step against ``inferlane serve --replicas``, as a time series."""
