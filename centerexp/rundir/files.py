"""The name of every file in a run folder, defined once (``runs/NAME/`` + these)."""

CONFIG = "config.yaml"  # the resolved config (file + overrides)
COMMAND = "command.txt"  # one line per process that started or resumed the run
ENV = "env.json"  # software, machine, threads, precision; "resumes" lists each later process
IDENTITY = "run.json"  # experiment, arm, profile (for a sweep's run) and the fingerprint of its start
METRICS = "metrics.csv"  # one row per evaluation
SUMMARY = "summary.json"  # status and progress
FEATURES = "features.pt"  # the last evaluation's test features, labels and centers
LAUNCHER = "launcher.json"  # how a launcher ran it: job id, log, state, earlier attempts
LOCK = ".lock"  # flock held while a process trains the run
CHECKPOINT = "checkpoints/last.pt"  # everything needed to resume after the last evaluation
PLOTS = "plots"  # loss_curves.png, features.png, features/<frame>.png, features.gif
LOSS_CURVES = "plots/loss_curves.png"
FEATURES_PNG = "plots/features.png"
FEATURE_FRAMES = "plots/features"
FEATURES_GIF = "plots/features.gif"
TENSORBOARD = "tb"  # TensorBoard event files and the projector's embedding (plot.tensorboard)
