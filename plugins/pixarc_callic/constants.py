"""CALLIC's constants, in a module of their own so that the codec, the model, the coder and
the trainer import them without importing each other."""

ARCH = "mgcf"  # the weights entries' architecture
COEF_Q = 4096        # channel coefficient grid for weights trained now: 1/4096 (≤ 0.016 px of mean error)
COEF_Q_FIRST = 64    # the grid of the first shipped weights, whose entries name no "coef_q" (≤ 1 px of
                     # error: too coarse once a model learns sharp scales, e.g. G ≈ R on line art)
MAX_SIDE = 16384     # the largest image side the codec takes (and a payload may claim)
