"""One module per ``twostage`` command: each parses its arguments, loads the config, calls the stage's
library function and prints what the user needs. Stages and store never import these modules.

``COMMANDS`` maps a command to (module, one-line help); ``pipeline/cli.py`` dispatches, imports lazily so
``--help`` is fast, and turns user errors into one line.
"""

COMMANDS: dict[str, tuple[str, str]] = {
    "synth": ("pipeline.commands.synth", "write a labelled synthetic video data set"),
    "plan": ("pipeline.commands.plan", "before extracting: store size, read + compute time, cheapest option"),
    "extract": ("pipeline.commands.extract", "stage one: a frozen backbone over videos into a feature store"),
    "train": ("pipeline.commands.train", "stage two: train a temporal head from a feature store"),
    "e2e": ("pipeline.commands.e2e", "end to end: a backbone and a head from decoded videos, with multigrid"),
    "eval": ("pipeline.commands.evaluate", "score a checkpoint on the held-out videos of a feature store"),
    "predict": ("pipeline.commands.predict", "top-k classes per video from a checkpoint (videos or a store)"),
    "run": ("pipeline.run", "stage one then stage two (and a results table) from one config"),
    "bench": ("pipeline.commands.bench", "the evidence table: every method's accuracy x cost, and its claim"),
    "inspect": ("pipeline.commands.inspect", "describe a feature store (--json for machines)"),
    "sources": ("pipeline.commands.sources", "annotation files of kinetics, ucf101, ... -> a source list"),
    "export": ("pipeline.commands.export", "one array per video ([T, d]) of a stored tensor, and a manifest"),
    "export-head": ("pipeline.commands.export_head", "a trained head as safetensors + JSON"),
    "verify": ("pipeline.commands.verify", "recompute checksums and scan for NaN/Inf"),
    "dedupe": ("pipeline.commands.dedupe", "keep one copy of each video id two extractions both committed"),
    "commit": ("pipeline.commit", "finish a store extracted as --part I/N runs: index and mark complete"),
}  # fmt: skip
