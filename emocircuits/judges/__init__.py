"""Independent readers of generated text: lexicon, embedding, the model itself, a classifier, another LLM.
"""

from emocircuits.judges.embedding import (  # noqa: F401
    EmbeddingJudge,
)
from emocircuits.judges.lexicon import (  # noqa: F401
    NRC_TO_EKMAN,
    LexiconJudge,
    nrc_lexicon,
)
from emocircuits.judges.model_judges import (  # noqa: F401
    JUDGE_QUESTION,
    JUDGE_SYSTEM,
    HFJudge,
    LLMJudge,
    SelfJudge,
)
from emocircuits.judges.panel import (  # noqa: F401
    JUDGE_NAMES,
    JudgeRun,
    accuracy,
    agreement,
    check_judge_name,
    get_judge,
    judge_dataset,
    judge_panel,
)
from emocircuits.judges.protocol import (  # noqa: F401
    NONE,
    Judge,
    verdict_frame,
)
