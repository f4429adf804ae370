import os

# On CPU the Triton kernels run in Triton's interpreter; must be set before triton is imported.
os.environ.setdefault("TRITON_INTERPRET", "1")
