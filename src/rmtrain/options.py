"""Typed options of the subcommands other than `train` (whose options are `config.TrainConfig`).

Each dataclass is the single source of its subcommand's flags and help, as `TrainConfig` is for
`train`; the CLI builds one and hands its fields to the orchestration by name.
"""

from __future__ import annotations

from dataclasses import dataclass

from rmtrain.config import option

MODEL_HELP = (
    "Model folder saved by rmtrain train, or an MLflow model: models:/NAME/VERSION, "
    "models:/NAME@ALIAS or runs:/RUN_ID/NAME (from MLFLOW_TRACKING_URI, else ./mlflow.db)."
)
SPEED_HELP = (
    "auto: rmtrain's exact speed-ups (prefix trees, per-block attention); off: the plain "
    "transformers forward, to compare or bisect. Same rewards either way."
)


@dataclass
class EvalConfig:
    """`rmtrain eval`: a reward model on preference data sets, with a report and plots."""

    model: str = option(None, MODEL_HELP, required=True)
    dataset: list[str] = option(
        [],
        "Data set (file or hub name, any training format); repeat for several.",
        action="append",
    )
    output: str = option(None, "Report folder (report.json, report.md, PNG plots).", required=True)
    benchmark: str | None = option(
        None,
        "Score a public benchmark instead of --dataset, as its authors do: rewardbench "
        "(allenai/reward-bench), rewardbench2 (allenai/reward-bench-2), rmbench "
        "(THU-KEG/RM-Bench).",
        choices=("rewardbench", "rewardbench2", "rmbench"),
    )
    benchmark_data: str | None = option(
        None, "A local copy of the benchmark in its hub schema (default: the hub data set)."
    )
    card: bool = option(
        False,
        "With --benchmark and a model folder rmtrain trained: put the scores in its model card "
        "(README.md; the only file of the model folder eval ever writes).",
    )
    report_to: str = option(
        "none",
        "With --benchmark, mlflow logs the scores as a run (one metric per section) and, for a "
        "models:/NAME/VERSION model, as tags of that version.",
        choices=("none", "mlflow"),
    )
    max_length: int | None = option(
        None, "Tokens per sequence (default: the training value).", low=8
    )
    batch: int | None = option(None, "Pairs per forward pass (approximate).", low=1)
    split: str = option("train", "Split of hub data sets.")
    speed: str = option("auto", SPEED_HELP, choices=("auto", "off"))
    robustness: bool = option(
        False, "Run the robustness probes (length, format, flattery, off-topic...) per data set."
    )
    probes: str | None = option(None, "Comma-separated probes (default: all).")
    probe_seed: int = option(0, "Seed of the probes' rewrites.")
    overwrite: bool = option(
        False, "Replace an existing report folder of rmtrain eval (never an input)."
    )


@dataclass
class ScoreConfig:
    """`rmtrain score`: rewards for the rows of a JSONL file, streamed."""

    model: str = option(None, MODEL_HELP, required=True)
    input: str = option(None, "JSONL: prompt + response, messages, or text.", required=True)
    output: str = option(None, "JSONL: each input row plus reward or error.", required=True)
    batch: int = option(256, "Rows read and scored per chunk.", low=1)
    max_length: int | None = option(None, "Tokens per row (default: the training value).", low=8)
    normalize: bool = option(False, "Apply the saved reward mean / std.")
    speed: str = option("auto", SPEED_HELP, choices=("auto", "off"))
    overwrite: bool = option(False, "Replace an existing output file (never an input).")


@dataclass
class ServeConfig:
    """`rmtrain serve`: the HTTP reward server."""

    model: str = option(None, MODEL_HELP, required=True)
    host: str = option("127.0.0.1", "Bind address (loopback by default).")
    port: int = option(8000, "Port.", low=1, high=65535)
    api_key: str | None = option(
        None,
        "Bearer token required on requests. Default: $RMTRAIN_API_KEY when set (its value is "
        "never printed).",
        show_default=False,
    )
    normalize: bool = option(False, "Apply the saved reward mean / std.")
    max_length: int | None = option(
        None,
        "Tokens per item (default: the training value); longer items are cut as in training.",
        low=8,
    )
    max_items: int = option(64, "Items per request.", low=1)
    max_body_bytes: int = option(2_000_000, "Request body limit in bytes.", low=1)
    timeout: float = option(30.0, "Seconds per request.", above=0, high=86400)
    body_timeout: float = option(
        10.0, "Seconds a client has to send its request body.", above=0, high=86400
    )
    max_per_client: int = option(256, "Requests in flight per client address.", low=1)
    header_timeout: float = option(
        10.0,
        "Seconds a connection has to send its request line and headers (then closed).",
        above=0,
        high=3600,
    )
    max_waiting_connections: int = option(
        1024, "Connections still sending headers; beyond it the longest-waiting is closed.", low=1
    )
    batch_wait_ms: float = option(
        5.0, "How long a request waits for others to batch with.", low=0, high=10_000
    )
    dynamic_batching: bool = option(True, "Score concurrent requests together.")
    trust_remote_code: bool = option(False, "Allow model code from the hub (off for safety).")
    speed: str = option("auto", SPEED_HELP, choices=("auto", "off"))


@dataclass
class HpoConfig:
    """`rmtrain hpo`: an Optuna study over training options."""

    space: str = option(None, "Search space (YAML).", required=True)
    n_trials: int = option(None, "Total trials in the study.", required=True, low=1)
    output: str = option(None, "Study folder (trials, plots, best config).", required=True)
    config: str | None = option(None, "Base training config (YAML).")
    storage: str | None = option(None, "Optuna storage URL (default: SQLite in --output).")
    study_name: str = option("rmtrain-hpo", "Study name.")
    jobs: int = option(1, "Processes sharing the study.", low=1)
    metric: str = option("win_rate", "Held-out metric to optimise.")
    direction: str | None = option(
        None,
        "maximize or minimize (default: minimize for loss, else maximize).",
        choices=("maximize", "minimize"),
    )
    pruner: str = option(
        "median", "Stop poor trials early at eval steps.", choices=("median", "none")
    )
    register_model: str | None = option(
        None, "Log the best trial's model to MLflow and register it under this name."
    )
    model_alias: str | None = option(None, "With --register-model: point this alias at it.")


@dataclass
class ValidateConfig:
    """`rmtrain validate`: every row of a data set checked; bad rows written with their place."""

    dataset: str = option(None, "File or hub name (any training format).", required=True)
    model: str | None = option(None, "Tokenizer source for the length check (skipped without).")
    max_length: int = option(512, "Token limit of the length check.", low=8)
    max_bad_fraction: float = option(
        0.01, "Fail when more than this share of rows is bad.", low=0, high=1
    )
    strict: bool = option(False, "Fail on any bad row.")
    output: str | None = option(None, "Write the JSON report (every bad row, its place) here.")
    overwrite: bool = option(False, "Replace an existing report file (never an input).")


@dataclass
class PrepareStackExchangeConfig:
    """`rmtrain prepare stackexchange`: a dump's Posts.xml to stack-exchange-paired pairs."""

    input: str = option(None, "Posts.xml or a site .7z dump.", required=True)
    output: str = option(None, "Pairs file: .jsonl or .parquet.", required=True)
    max_pairs_per_question: int = option(10, "Cap of pairs per question.", low=1)
    seed: int = option(0, "Seed for sampling capped pairs.")
    overwrite: bool = option(False, "Replace an existing pairs file (never an input).")


@dataclass
class LogModelConfig:
    """`rmtrain log-model OUTPUT`: log a saved output folder to MLflow as a new run (metrics,
    report, files and the model), and register it; for a run whose tracking store failed."""

    register_model: str | None = option(None, "Register the model under this name.")
    model_alias: str | None = option(None, "With --register-model: point this alias at it.")
    run_name: str | None = option(None, "Run name (default: the output folder's name).")


@dataclass
class AverageConfig:
    """`rmtrain average OUT MODEL [MODEL ...]`: the mean of the weights of reward models
    fine-tuned from one base (WARM), saved as a normal model folder."""

    overwrite: bool = option(False, "Replace OUT when it holds an rmtrain model (never an input).")
