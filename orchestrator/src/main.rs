//! `sera`: the command users type. Parses arguments and hands off to `commands`.

mod commands;

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
    /// Run an experiment on this machine (the embedded default): plan it, run every job without a
    /// result in a `sera-worker run-job` child process, and print the tables.
    Run {
        /// Experiment file (configs/experiments/*.toml).
        experiment: PathBuf,
        /// Run directory (default: runs/<experiment name>).
        #[arg(long)]
        out: Option<PathBuf>,
        /// Corpus root for a dataset: NAME=DIR (repeatable).
        #[arg(long = "root", value_name = "NAME=DIR")]
        roots: Vec<String>,
        /// cpu, cuda or cuda:N.
        #[arg(long, default_value = "cpu")]
        device: String,
    },
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
}

#[derive(Subcommand)]
enum BenchCommand {
    /// Stage-2 and stage-3 epochs (5000 × 768 features, batch 64) vs tools/bench_reference.py.
    Stages {
        /// cpu, cuda or cuda:N.
        #[arg(long, default_value = "cpu")]
        device: String,
        /// Python with torch for the reference (default: the set-up cache's, else python3).
        #[arg(long)]
        python: Option<PathBuf>,
        /// Timed epochs (after one warm-up).
        #[arg(long, default_value_t = 3)]
        epochs: usize,
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
        Command::Run { experiment, out, roots, device } => commands::run(&experiment, out, &roots, &device),
        Command::Results { run, format } => commands::results(
            &run,
            match format {
                TableFormat::Markdown => sera::report::Format::Markdown,
                TableFormat::Csv => sera::report::Format::Csv,
                TableFormat::Latex => sera::report::Format::Latex,
            },
        ),
        Command::Bench(BenchCommand::Stages { device, python, epochs }) => {
            commands::bench_stages(&device, python, epochs)
        }
        Command::Bench(BenchCommand::Queue { redis, jobs }) => commands::bench_queue(redis.as_deref(), jobs),
        Command::Env => commands::env(),
    };
    match result {
        Ok(code) => code,
        Err(e) => {
            eprintln!("error: {e:#}");
            ExitCode::from(2)
        }
    }
}
