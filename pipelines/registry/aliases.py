"""The registry's alias names: the one owner of this contract.

``champion`` is what the gate promotes and, unless ``serve.model_alias`` says otherwise, what serving and
monitoring follow; ``challenger`` is the newest registered candidate; ``previous-champion`` is where a
rollback goes. Everything else reads these names from here (or the served alias from ``serve.model_alias``).
"""

CHAMPION = "champion"
CHALLENGER = "challenger"
PREVIOUS = "previous-champion"
