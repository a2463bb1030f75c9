"""Run directories: the only place results are written (manifest, Parquet, safetensors, atomic writes).
"""

from emocircuits.runs.circuit_files import (  # noqa: F401
    read_circuits,
    save_circuits,
)
from emocircuits.runs.rundir import (  # noqa: F401
    MANIFEST,
    SCHEMA_VERSION,
    RunDir,
    check_out_dir,
    finished_run,
    open_run,
    package_versions,
    read_manifest,
    read_table,
    read_tensors,
    remake_advice,
    resolve_paths,
)
