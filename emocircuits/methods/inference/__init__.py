"""Emotion inference (Tak et al. 2025): probes, knockout, patching, probe promotion and appraisal steering.
"""

from emocircuits.methods.inference.appraisal_theory import (  # noqa: F401
    THEORY,
    TheorySetting,
    get_setting,
    theory_table,
)
from emocircuits.methods.inference.patching import (  # noqa: F401
    AttributionResult,
    attribute,
    compare_attribution,
    knockout,
    make_pairs,
    patch,
)
from emocircuits.methods.inference.prepare import (  # noqa: F401
    KNOCKOUT_MODES,
    Prepared,
    appraisal_matrix,
    capture_sites,
    prepare,
    windows,
)
from emocircuits.methods.inference.probes import (  # noqa: F401
    ProbeResult,
    label_permutations,
    probe,
    probe_activations,
)
from emocircuits.methods.inference.steering import (  # noqa: F401
    appraisal_direction,
    choose_beta,
    promote,
    steer_appraisal,
)
