//! `sera`: the command users type. Parses arguments and hands off to `commands`.

mod bench;
mod cluster;
mod commands;
mod features;

use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Parser, Subcommand};

/// Speech emotion recognition with InfoGAN-generated training features.
#[derive(Parser)]
#[command(name = "sera", version, about)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Inspect corpora and folds.
    #[command(subcommand)]
    Data(DataCommand),
    /// Write the demo corpus (espeak-ng speech in the IEMOCAP release layout).
    DemoCorpus {
        /// Output directory (the corpus root).
        #[arg(long)]
        out: PathBuf,
        /// Recording sessions, each with one female and one male speaker.
        #[arg(long, default_value_t = 3)]
        sessions: usize,
        /// Sentences per emotion per speaker.
        #[arg(long, default_value_t = 10)]
        sentences: usize,
    },
    /// Expand an experiment into self-contained job specs.
    Plan {
        /// Experiment file (configs/experiments/*.toml).
        experiment: PathBuf,
        /// Corpus root for a dataset, overriding its spec: NAME=DIR (repeatable).
        #[arg(long = "root", value_name = "NAME=DIR")]
        roots: Vec<String>,
        /// Print the plan as JSON (every job spec).
        #[arg(long)]
        json: bool,
        /// Write one <job-id>.json per job into this directory.
        #[arg(long)]
        out: Option<PathBuf>,
    },
    /// Run an experiment: plan it, queue every job without a result and follow them until the
    /// sweep is drained, recording each verified result in the run directory; then print the
    /// tables. Without --redis the jobs run here (in-process queue, local workers); with --redis
    /// on the cluster's `sera-worker work` daemons.
    Run(cluster::RunArgs),
    /// Queued, running, done and dead jobs: each running job's worker, stage, progress and ETA,
    /// and each dead job's reason.
    Status(cluster::StatusArgs),
    /// Aggregate a run directory into the paper's tables.
    Results {
        /// Run directory (holds <job-id>/result.json).
        run: PathBuf,
        #[arg(long, value_enum, default_value_t = TableFormat::Markdown)]
        format: TableFormat,
    },
    /// Benchmarks that print ratios against a reference measured in the same run.
    #[command(subcommand)]
    Bench(BenchCommand),
    /// Show the libtorch build and the devices it sees.
    Env,
    /// Pooled features of a whole corpus (audio with --backbone, transcripts with --text-encoder)
    /// into DIR/features.safetensors + ids.json, a cache reused while model, front end and ids match.
    Features {
        /// Audio backbone spec (configs/backbones/*.toml, kind ast or wav2vec2).
        #[arg(long, conflicts_with = "text_encoder", required_unless_present = "text_encoder")]
        backbone: Option<PathBuf>,
        /// Text encoder spec (kind bert or roberta): features of the transcripts.
        #[arg(long)]
        text_encoder: Option<PathBuf>,
        /// Text pooling, overriding the spec: mean, cls or pooler.
        #[arg(long)]
        pooling: Option<String>,
        /// Dataset spec (configs/datasets/*.toml).
        #[arg(long)]
        dataset: PathBuf,
        /// Corpus root, overriding the spec.
        #[arg(long)]
        root: Option<PathBuf>,
        /// Output directory.
        #[arg(long)]
        out: PathBuf,
        /// cpu, cuda or cuda:N.
        #[arg(long, default_value = "cpu")]
        device: String,
        /// fp32 (features are a cache of the checkpoint's fp32 outputs; bf16 is refused).
        #[arg(long, default_value = "fp32")]
        precision: String,
        /// Clips or texts per batch (default: by model and device).
        #[arg(long)]
        batch_size: Option<usize>,
    },
}

#[derive(Subcommand)]
enum BenchCommand {
    /// Fbank, AST and wav2vec2-large-robust-12 throughput (real shapes, random weights) vs
    /// tools/bench_models_reference.py (PyTorch + torchaudio + transformers) in the same run.
    Models {
        /// cpu, cuda or cuda:N.
        #[arg(long, default_value = "cpu")]
        device: String,
        /// Python with torch, torchaudio and transformers (default: the set-up cache's, else python3).
        #[arg(long)]
        python: Option<PathBuf>,
        /// Measure sera only.
        #[arg(long)]
        no_reference: bool,
        /// Only the AST front end (fbank), the CPU target; skips both models.
        #[arg(long)]
        fbank_only: bool,
    },
    /// Stage-2 and stage-3 epochs (5000 × 768 features, batch 64) vs tools/bench_reference.py.
    Stages {
        /// cpu, cuda or cuda:N.
        #[arg(long, default_value = "cpu")]
        device: String,
        /// Python with torch for the reference (default: the set-up cache's, else python3).
        #[arg(long)]
        python: Option<PathBuf>,
        /// Timed epochs per round (after one warm-up); each side reports their median.
        #[arg(long, default_value_t = 5)]
        epochs: usize,
        /// Rounds of sera-then-reference; the summary is the median round's ratio.
        #[arg(long, default_value_t = 3)]
        rounds: usize,
    },
    /// No-op jobs per second through the queue (Redis with --redis, else in-process).
    Queue {
        #[arg(long)]
        redis: Option<String>,
        #[arg(long, default_value_t = 5000)]
        jobs: usize,
    },
}

/// Output format of `sera results`.
#[derive(Clone, Copy, clap::ValueEnum)]
enum TableFormat {
    Markdown,
    Csv,
    Latex,
}

#[derive(Subcommand)]
enum DataCommand {
    /// Counts per speaker × label and per fold, durations, and every problem found.
    Inspect {
        /// Dataset spec (configs/datasets/*.toml).
        spec: PathBuf,
        /// Corpus root, overriding the spec and SERA_ROOT_<NAME>.
        #[arg(long)]
        root: Option<PathBuf>,
        /// Machine-readable output.
        #[arg(long)]
        json: bool,
        /// Count utterances longer than this many seconds (AST's window is 10.24 s).
        #[arg(long, default_value_t = 10.24)]
        over: f64,
    },
    /// Write the dataset's folds (train/validation/test ids, with checksums) to a JSON file.
    Folds {
        /// Dataset spec.
        spec: PathBuf,
        #[arg(long)]
        root: Option<PathBuf>,
        /// Output file; read it back with `protocol = "fold-file"`.
        #[arg(long)]
        out: PathBuf,
    },
}

fn main() -> ExitCode {
    tracing_subscriber::fmt()
        .with_env_filter(tracing_subscriber::EnvFilter::try_from_default_env().unwrap_or_else(|_| "info".into()))
        .with_writer(std::io::stderr)
        .init();
    let cli = Cli::parse();
    let result = match cli.command {
        Command::Data(DataCommand::Inspect { spec, root, json, over }) => {
            commands::inspect(&spec, root.as_deref(), json, over)
        }
        Command::Data(DataCommand::Folds { spec, root, out }) => commands::folds(&spec, root.as_deref(), &out),
        Command::DemoCorpus { out, sessions, sentences } => commands::demo_corpus(&out, sessions, sentences),
        Command::Plan { experiment, roots, json, out } => commands::plan(&experiment, &roots, json, out.as_deref()),
        Command::Run(args) => cluster::run(args),
        Command::Status(args) => cluster::status(args),
        Command::Results { run, format } => commands::results(
            &run,
            match format {
                TableFormat::Markdown => sera::report::Format::Markdown,
                TableFormat::Csv => sera::report::Format::Csv,
                TableFormat::Latex => sera::report::Format::Latex,
            },
        ),
        Command::Bench(BenchCommand::Stages { device, python, epochs, rounds }) => {
            bench::stages(&device, python, epochs, rounds)
        }
        Command::Bench(BenchCommand::Queue { redis, jobs }) => bench::queue(redis.as_deref(), jobs),
        Command::Env => commands::env(),
        Command::Features { backbone, text_encoder, pooling, dataset, root, out, device, precision, batch_size } => {
            features::features(features::FeaturesArgs {
                backbone,
                text_encoder,
                pooling,
                dataset,
                root,
                out,
                device,
                precision,
                batch_size,
            })
        }
        Command::Bench(BenchCommand::Models { device, python, no_reference, fbank_only }) => {
            bench::models(&device, python, no_reference, fbank_only)
        }
    };
    match result {
        Ok(code) => code,
        Err(e) => {
            eprintln!("error: {e:#}");
            ExitCode::from(2)
        }
    }
}
