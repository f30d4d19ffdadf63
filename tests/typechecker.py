"""The runtime type checker the test suite runs nrnlib under (``NRN_TYPECHECK=1``, set by ``make test``):
beartype through jaxtyping's import hook, with PEP 484's numeric tower (an ``int`` is a valid
``float``). Array shapes and dtypes in ``jaxtyping`` annotations are checked too."""

from beartype import BeartypeConf, beartype

typecheck = beartype(conf=BeartypeConf(is_pep484_tower=True))
