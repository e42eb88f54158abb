__version__ = "0.1.0"

# The C ABI of compiled libraries (runtime_c/sparsec.h's SPARSEC_ABI_VERSION, which a test
# keeps equal): the loader refuses a library built for another, and the model info says it.
ABI_VERSION = 3
