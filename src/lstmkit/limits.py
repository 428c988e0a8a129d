"""Bounds of the values a user gives at the command line or to the inference functions:
large enough for any real use, small enough that a typo cannot run for hours, allocate the
machine away or overflow a number. One place, so that the CLI's ``--help`` and the
library's checks say the same. (Light on purpose: the CLI imports it before torch.)"""

MAX_HORIZON = 100_000  # forecast steps: beyond, a forecast runs for hours and means nothing
MAX_CHARS = 1_000_000  # characters generate samples
# Below 1e-3 sampling is already greedy for any scores a model gives, above 1e3 uniform;
# outside, scores / temperature overflow or underflow a double.
MIN_TEMPERATURE, MAX_TEMPERATURE = 1e-3, 1e3
MAX_SEED = 2**63 - 1  # torch's generators take a 64-bit seed
MAX_WINDOWS, MAX_STEP = 1_000, 1_000_000  # backtest windows and steps between origins
FLOAT32_MAX = 3.4028234663852886e38  # the models compute in float32: a larger value is inf
# Config sizes and counts (lstmkit.config): refused above these before anything is allocated,
# far beyond what one machine trains and small enough that products of them stay in int64.
MAX_SIZE = 1 << 20  # hidden, embedding, window length, horizon, period, batch
MAX_COUNT = 1 << 31  # windows per split, epochs, rows
MAX_TRAIN_SEED = (1 << 32) - 1  # training derives seed * 1_000_003 + epoch: it stays in int64
