"""Augmentation techniques (synonyms, structural reordering, FGSM) and the augmentation pass."""
