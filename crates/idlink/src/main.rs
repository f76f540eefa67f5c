//! The `idlink` command.

mod alloc;
mod lines;
mod replay;
mod service;
mod settings;

use anyhow::Result;
use clap::{Parser, Subcommand};
use std::path::PathBuf;

/// idlink links the devices people use to the accounts they own.
#[derive(Parser)]
#[command(version, about)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Replay recorded event files through the engine and write the graph.
    Replay {
        /// Input files (JSON lines; `-` reads stdin; `.gz` accepted).
        #[arg(long, required = true, num_args = 1..)]
        input: Vec<PathBuf>,
        /// Config file (default: config/default.toml if present).
        #[arg(long)]
        config: Option<PathBuf>,
        /// Output directory.
        #[arg(long)]
        out: PathBuf,
        /// Exit non-zero if any line is rejected.
        #[arg(long)]
        strict: bool,
        /// Skip writing the graph files (engine benchmarks).
        #[arg(long, hide = true)]
        quiet: bool,
    },
    /// Run the linking service on Kafka until SIGTERM or SIGINT.
    Run {
        /// Config file (default: config/default.toml if present).
        #[arg(long)]
        config: Option<PathBuf>,
    },
    /// Write a simulated population's events and ground truth.
    Simulate {
        /// People in the population.
        #[arg(long, default_value_t = 2000)]
        people: u32,
        /// Days simulated.
        #[arg(long, default_value_t = 30)]
        days: u32,
        /// Random seed.
        #[arg(long, default_value_t = 1)]
        seed: u64,
        /// Percent of home sessions that start within ten minutes of a
        /// housemate's (households that go online together); 0 keeps
        /// schedules independent.
        #[arg(long, default_value_t = 0, value_parser = clap::value_parser!(u32).range(0..=100))]
        household_sync: u32,
        /// Percent of app phones also used in their browser under a cookie
        /// of its own (one phone, two ids); 0 gives every phone one id.
        #[arg(long, default_value_t = 0, value_parser = clap::value_parser!(u32).range(0..=100))]
        phone_browsers: u32,
        /// Output directory (events.jsonl, truth.json).
        #[arg(long)]
        out: PathBuf,
    },
    /// Score a device-links file against a simulator's ground truth.
    Evaluate {
        /// truth.json from `simulate`.
        #[arg(long)]
        truth: PathBuf,
        /// device-links.jsonl from `replay`.
        #[arg(long)]
        links: PathBuf,
        /// Print JSON instead of text.
        #[arg(long)]
        json: bool,
    },
    /// Run the naive co-location rule, for comparison with the engine.
    Baseline {
        /// events.jsonl from `simulate`.
        #[arg(long)]
        input: PathBuf,
        /// Output device-links.jsonl.
        #[arg(long)]
        out: PathBuf,
    },
}

/// Logs to stderr as text or JSON lines.
fn init_logging(format: &str, level: &str) {
    let filter = tracing_subscriber::EnvFilter::try_new(level).unwrap_or_else(|_| "info".into());
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr);
    if format == "json" {
        builder.json().init();
    } else {
        builder.init();
    }
}

#[global_allocator]
static ALLOCATOR: alloc::HugePages = alloc::HugePages;

fn main() -> Result<()> {
    let cli = Cli::parse();
    let level = std::env::var("IDLINK_LOG").unwrap_or_else(|_| "info".into());
    if !matches!(cli.command, Command::Run { .. }) {
        init_logging("text", &level);
    }
    match cli.command {
        Command::Run { config } => {
            let settings = settings::Settings::load(config.as_deref())?;
            let cfg = service::ServiceConfig::from_table(&settings.service)?;
            init_logging(&cfg.log.format, &cfg.log.level);
            let runtime = tokio::runtime::Builder::new_multi_thread()
                .enable_all()
                .build()?;
            let result = runtime.block_on(service::run(settings, cfg));
            // A consumer still leaving its group on a blocking thread (see
            // `leave_group`) must not hold the exit.
            runtime.shutdown_timeout(std::time::Duration::from_secs(1));
            result?;
        }
        Command::Replay {
            input,
            config,
            out,
            strict,
            quiet,
        } => {
            let settings = settings::Settings::load(config.as_deref())?;
            replay::replay(
                &settings,
                &replay::ReplayArgs {
                    inputs: &input,
                    out: &out,
                    strict,
                    quiet,
                },
            )?;
        }
        Command::Simulate {
            people,
            days,
            seed,
            household_sync,
            phone_browsers,
            out,
        } => {
            let scenario = idlink_sim::Scenario {
                people,
                days,
                seed,
                household_sync_percent: household_sync,
                phone_browser_percent: phone_browsers,
                ..Default::default()
            };
            let stats = scenario.write(&out)?;
            eprintln!("{stats}");
        }
        Command::Evaluate { truth, links, json } => {
            let ev = idlink_sim::evaluate(&truth, &links)?;
            if json {
                println!("{}", serde_json::to_string_pretty(&ev)?);
            } else {
                println!("{ev}");
            }
        }
        Command::Baseline { input, out } => {
            let n = idlink_sim::naive_baseline(&input, &out)?;
            eprintln!("baseline: {n} devices linked");
        }
    }
    Ok(())
}
