"""iGSM: the synthetic grade-school math problems of "Physics of Language Models, Part 2.1".

Generator (`generator`), lexicon (`lexicon`), tokenizer (`tokenizer`), text-only judge
(`judge`) and data-set writer (`dataset`); `python -m vld.data.igsm --help` for the CLI.
`IgsmConfig.from_dict(values, where)` builds a validated config from a preset plus fields.
"""

from vld.data.igsm.dataset import generate_dataset
from vld.data.igsm.generator import PRESETS, TEST_OPS, IgsmConfig, light_law
from vld.data.igsm.lexicon import Lexicon

__all__ = ["IgsmConfig", "PRESETS", "TEST_OPS", "Lexicon", "generate_dataset", "light_law"]
