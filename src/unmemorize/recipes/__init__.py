"""Recipes: one file per command, each a short orchestration of components (config -> recipe -> components -> loop -> outputs)."""
