"""Each paper's analyses as typed functions with result dataclasses: no config dicts, no files written, no CLI words."""
