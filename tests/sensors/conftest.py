# The registry fixtures of the server tests, shared rather than copied.
from tests.serve.conftest import empty_registry_db, policy_file, registry  # noqa: F401
