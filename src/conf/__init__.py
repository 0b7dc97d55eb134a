"""The Hydra configs. A package (this file) so Hydra finds them in a wheel as pkg://src.conf."""
