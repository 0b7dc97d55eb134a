"""Speed benchmarks: each script measures us against a reference in the same process."""
