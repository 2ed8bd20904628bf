"""Input data, below the tasks that use it: sources (`sources`: folders, globs, lists, tar shards, parquet, text
files), evaluation dataset readers (`datasets`) and synthetic data (`synthetic`). Imports nothing above
`siglite.errors` and `siglite.jsonio`."""
