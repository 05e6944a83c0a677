"""Session-wide test settings.

Every test process runs Triton kernels in its CPU interpreter. Triton reads TRITON_INTERPRET when a
kernel is decorated, so it is set here, before any test module imports triton, and never changed
afterwards: what a test sees no longer depends on which modules were collected first. Tests that
compile for a GPU ahead of time (Gluon cannot be interpreted) do it in a child process without the
variable (``tests/clean_process.py``).
"""
import os

os.environ["TRITON_INTERPRET"] = "1"

# Test-only methods (TEST_*) are registered in every test process, whichever test runs first.
import tests.fake_methods  # noqa: E402,F401
