"""The asset modules of the code location, in the lists deepfeed.definitions loads them from."""

from deepfeed.assets import augment, compression, corpus, evaluation, incremental, lifecycle, monitoring, training

# The full chain, raw corpus to champion: what `deepfeed demo` and full_chain_job materialize.
ASSET_MODULES = [corpus, augment, training, compression, evaluation, lifecycle]
# Every asset of the code location: the chain, the incremental stream (one partition per
# feedback batch) and monitoring, which reads production traffic rather than the chain's
# artifacts and so stays out of ASSET_MODULES.
ALL_ASSET_MODULES = [*ASSET_MODULES, incremental, monitoring]
