"""Constants of the signal and symbolic front ends, with their units.

Derived values are computed from the base ones so that a change of one stays consistent.
"""
from __future__ import annotations

# --- audio -----------------------------------------------------------------------------------
MERT_SAMPLE_RATE_HZ = 24_000          # MERT-v1 input rate
CQT_SAMPLE_RATE_HZ = 44_100           # CQT front-end rate
PEAK_TARGET_DBFS = -3.0               # peak normalisation target
PEAK_TARGET_LINEAR = 10.0 ** (PEAK_TARGET_DBFS / 20.0)
SILENCE_PEAK_DBFS = -60.0             # a signal whose peak is below this is "silent"
MIN_DURATION_S = 1.0                  # default shortest accepted recording

# --- CQT -------------------------------------------------------------------------------------
CQT_BINS_PER_OCTAVE = 24
CQT_N_OCTAVES = 7                     # C1 .. C8
CQT_N_BINS = CQT_BINS_PER_OCTAVE * CQT_N_OCTAVES          # 168
CQT_FMIN_HZ = 32.703195662574764      # C1
CQT_HOP_SAMPLES = 512
CQT_FRAMES_PER_S = CQT_SAMPLE_RATE_HZ / CQT_HOP_SAMPLES   # ~86.13
CQT_LOG_EPS = 1e-6                    # log-magnitude floor: log(|C| + eps)

# --- MERT / HuBERT framing -------------------------------------------------------------------
MERT_HOP_SAMPLES = 320                # product of conv strides 5*2*2*2*2*2*2
MERT_FRAMES_PER_S = MERT_SAMPLE_RATE_HZ / MERT_HOP_SAMPLES  # 75

# --- segmentation ----------------------------------------------------------------------------
TRAIN_WINDOW_S = 10.0
INFER_WINDOW_S = 25.0                 # inference windows are 20-30 s
WINDOW_OVERLAP = 0.5                  # fraction of a window shared with the next
TRAIN_WINDOW_SAMPLES_MERT = int(TRAIN_WINDOW_S * MERT_SAMPLE_RATE_HZ)
TRAIN_WINDOW_FRAMES_CQT = int(TRAIN_WINDOW_S * CQT_FRAMES_PER_S) + 1
MAX_NOTES_PER_WINDOW = 512            # symbolic tokens per training window (padded/truncated)

# --- piano range -----------------------------------------------------------------------------
PIANO_MIN_PITCH = 21                  # A0
PIANO_MAX_PITCH = 108                 # C8
N_PIANO_KEYS = PIANO_MAX_PITCH - PIANO_MIN_PITCH + 1       # 88

# --- MIDI pedal controllers ------------------------------------------------------------------
CC_SUSTAIN = 64
CC_SOSTENUTO = 66
CC_SOFT = 67
PEDAL_DOWN_THRESHOLD = 64             # controller value >= this means "pedal down"

# --- file types ------------------------------------------------------------------------------
# every suffix pipelines.io.audio decodes: libsndfile's formats, then AAC and WMA through ffmpeg
AUDIO_EXTENSIONS = (".wav", ".rf64", ".w64", ".flac", ".mp3", ".ogg", ".oga", ".opus", ".aiff", ".aif", ".aifc",
                    ".caf", ".au", ".m4a", ".aac", ".wma")
MIDI_EXTENSIONS = (".mid", ".midi")
MUSICXML_EXTENSIONS = (".musicxml", ".mxl", ".xml")
SCORE_EXTENSIONS = MIDI_EXTENSIONS + (".musicxml", ".mxl")

# --- OctupleMIDI vocabulary (see pipelines/features/octuple.py) ---------------------------------------
# Every field reserves 0 = PAD and 1 = MASK; a field value v is stored as v + OCTUPLE_N_SPECIAL.
OCTUPLE_N_SPECIAL = 2
OCTUPLE_FIELDS = ("type", "bar", "position", "pitch", "duration", "velocity", "instrument",
                  "time_signature")
OCTUPLE_TICKS_PER_QUARTER = 24        # position/duration resolution (32nds and 16th triplets exact)
OCTUPLE_MAX_BARS = 256                # bar index relative to the window's first bar
OCTUPLE_MAX_POSITION_TICKS = 16 * OCTUPLE_TICKS_PER_QUARTER   # longest bar: 16 quarters
OCTUPLE_MAX_DURATION_TICKS = 16 * OCTUPLE_TICKS_PER_QUARTER   # longer notes are clipped
OCTUPLE_N_TYPES = 5                   # 0 BOS, 1 EOS, 2 NOTE (played), 3 MISSED (score only), 4 EXTRA (performance only)
OCTUPLE_N_INSTRUMENTS = 129           # GM programs 0..127, 128 = drums
OCTUPLE_TS_DENOMINATORS = (1, 2, 4, 8, 16, 32)
OCTUPLE_TS_MAX_NUMERATOR = 16
OCTUPLE_VOCAB_SIZES = tuple(n + OCTUPLE_N_SPECIAL for n in (
    OCTUPLE_N_TYPES,
    OCTUPLE_MAX_BARS,
    OCTUPLE_MAX_POSITION_TICKS,
    N_PIANO_KEYS,
    OCTUPLE_MAX_DURATION_TICKS + 1,
    128,
    OCTUPLE_N_INSTRUMENTS,
    OCTUPLE_TS_MAX_NUMERATOR * len(OCTUPLE_TS_DENOMINATORS),
))

# --- aligned performance attributes, one vector per symbolic token ---------------------------
PERF_ATTR_NAMES = (
    "played",            # 1 if the score note was matched to a performed note
    "missed",            # 1 if the score note was not played
    "extra",             # 1 if the performed note is not in the score
    "velocity",          # MIDI velocity / 127
    "onset_dev",         # onset deviation from the local tempo, in beats (clipped to +-2)
    "log_ioi_ratio",     # log of performed IOI / expected IOI (clipped to +-2)
    "log_duration_ratio",  # log of performed / expected duration (clipped to +-3)
    "sustain",           # sustain pedal (CC64) down at the onset, 0/1
    "soft",              # una corda (CC67) down at the onset, 0/1
    "sostenuto",         # sostenuto (CC66) down at the onset, 0/1
)
N_PERF_ATTRS = len(PERF_ATTR_NAMES)
