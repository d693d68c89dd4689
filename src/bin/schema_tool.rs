//! schema_tool: checks the schema folder and renders its Kubernetes ConfigMap (used by
//! `schemas/Makefile`).

use anyhow::Context;
use clap::{Parser, Subcommand};
use seckill_kafka::cli;
use seckill_kafka::schemas::{configmap, validate};
use std::path::{Path, PathBuf};
use std::process::ExitCode;

/// Schema folder tool: validate every .proto and .avsc, write or check the ConfigMap.
#[derive(Debug, Parser)]
#[command(version)]
struct Args {
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Compile every .proto and parse every .avsc under DIR; fail on the first error
    Validate {
        #[arg(default_value = "schemas")]
        dir: PathBuf,
    },
    /// Write the ConfigMap of DIR's schema files to OUTPUT (with --check: fail if OUTPUT
    /// differs instead of writing it)
    Sync {
        #[arg(default_value = "schemas")]
        dir: PathBuf,
        #[arg(long)]
        output: PathBuf,
        /// ConfigMap name
        #[arg(long, default_value = "seckill-kafka-schemas")]
        name: String,
        #[arg(long)]
        check: bool,
    },
}

fn main() -> ExitCode {
    let args = Args::parse();
    let result = match args.command {
        Command::Validate { dir } => validate(&dir).map_err(anyhow::Error::from).map(|files| {
            for file in files {
                println!("ok {}", dir.join(file).display());
            }
        }),
        Command::Sync {
            dir,
            output,
            name,
            check,
        } => sync(&dir, &output, &name, check),
    };
    cli::finish("schema_tool", result)
}

fn sync(dir: &Path, output: &Path, name: &str, check: bool) -> anyhow::Result<()> {
    let rendered = configmap(dir, name)?;
    if check {
        let committed = std::fs::read_to_string(output)
            .with_context(|| format!("cannot read {}", output.display()))?;
        anyhow::ensure!(
            committed == rendered,
            "{} is stale: run `make -C schemas sync` and commit it",
            output.display()
        );
        println!("ok {} is up to date", output.display());
    } else {
        if let Some(parent) = output.parent() {
            std::fs::create_dir_all(parent)?;
        }
        std::fs::write(output, rendered)
            .with_context(|| format!("cannot write {}", output.display()))?;
        println!("wrote {}", output.display());
    }
    Ok(())
}
