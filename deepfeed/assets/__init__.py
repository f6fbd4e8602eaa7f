from deepfeed.assets import augment, compression, corpus, evaluation, training
ASSET_MODULES = [corpus, augment, training, compression, evaluation]
