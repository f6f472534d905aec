"""The adaptive codec's constants, apart, so the codec and the trainer import them without each other."""

LAMBDAS = {1: 0.0018, 2: 0.0035, 3: 0.0067, 4: 0.0130, 5: 0.0250, 6: 0.0483, 7: 0.0932, 8: 0.1800}  # CompressAI's
ZOO_NM = {q: (128, 192) if q <= 4 else (192, 320) for q in range(1, 9)}  # the zoo's N, M per quality
ARCH = "mbt2018-mean"  # the weights entries' architecture
