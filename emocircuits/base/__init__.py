"""Floor 1 of the package: one-sentence errors, constants, seeds, atomic writes, intervals. Imports nothing of ours."""
