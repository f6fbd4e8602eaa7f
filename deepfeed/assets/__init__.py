from deepfeed.assets import augment, compression, corpus, evaluation, lifecycle, training

ASSET_MODULES = [corpus, augment, training, compression, evaluation, lifecycle]
