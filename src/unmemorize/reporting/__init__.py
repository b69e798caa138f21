"""Reports, figures and tables: everything that turns a run's results into something to read."""
