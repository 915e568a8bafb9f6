"""The built-in methods (docs/design.md §4): closed-form (objective, distribution)
compositions, and the papers' baselines as whole editors (FT, FT-L, KN, MEND; IKE, which edits
the prompt, not the weights).

The registry registers them on its first lookup."""

from massedit.baselines.finetune import ConstrainedFineTuneHparams, FineTuneHparams, fine_tune
from massedit.baselines.ike import IkeHparams, in_context_edit
from massedit.baselines.knowledge_neurons import KnowledgeNeuronHparams, knowledge_neurons
from massedit.baselines.mend import MendHparams, mend_edit
from massedit.contracts import MethodSpec

BUILTIN_METHODS = (
    MethodSpec("rome", "equality", "single", description="ROME: rank-one, one layer"),
    MethodSpec("memit", "least_squares", "spread", description="MEMIT: mass editing"),
    MethodSpec("emmet", "equality", "spread", description="EMMET: batched equality"),
    MethodSpec("ft", editor=fine_tune, hparams=FineTuneHparams,
               description="FT: fine-tune one MLP output weight (Adam, early stopping)"),
    MethodSpec("ft-l", editor=fine_tune, hparams=ConstrainedFineTuneHparams,
               description="FT-L: FT with every weight change in an L-infinity ball"),
    MethodSpec("ike", editor=in_context_edit, hparams=IkeHparams,
               description="IKE: new facts and demonstrations in the prompt, no weight change"),
    MethodSpec("kn", editor=knowledge_neurons, hparams=KnowledgeNeuronHparams,
               description="KN: knowledge neurons by integrated gradients, value vectors moved"),
    MethodSpec("mend", editor=mend_edit, hparams=MendHparams,
               description="MEND: a trained hypernetwork maps fine-tuning gradients to updates"),
)
