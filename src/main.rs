//! The `recbot` binary: parses the command line and runs a subcommand.

use clap::Parser;
use recbot::config::{Cli, Command, LogFormat};
use std::process::ExitCode;

#[tokio::main]
async fn main() -> ExitCode {
    let cli = Cli::parse();
    match cli.command {
        Some(Command::Publish(args)) => {
            recbot::logging::init(
                LogFormat::Text,
                &std::env::var("RECBOT_LOG").unwrap_or("info".into()),
            );
            match recbot::publish::run(args).await {
                Ok(()) => ExitCode::SUCCESS,
                Err(e) => {
                    eprintln!("recbot publish: {e}");
                    ExitCode::FAILURE
                }
            }
        }
        Some(Command::Serve(args)) => serve(args).await,
        Some(Command::Repair { dir }) => {
            recbot::logging::init(LogFormat::Text, "warn");
            recbot::record::store::repair_command(&dir)
        }
        Some(Command::Inspect { files }) => {
            let mut failed = false;
            for file in files {
                match recbot::record::inspect::inspect(&file) {
                    Ok(report) => println!("{report}"),
                    Err(e) => {
                        eprintln!("{}: {e}", file.display());
                        failed = true;
                    }
                }
            }
            if failed {
                ExitCode::FAILURE
            } else {
                ExitCode::SUCCESS
            }
        }
        None => serve(cli.serve).await,
    }
}

async fn serve(args: recbot::config::ServeArgs) -> ExitCode {
    recbot::logging::init(args.log_format, &args.log);
    let files = recbot::util::raise_open_files_limit();
    tracing::debug!(?files, "open files limit");
    let config = match args.validate() {
        Ok(config) => config,
        Err(e) => {
            eprintln!("recbot: {e}");
            return ExitCode::from(2);
        }
    };
    match recbot::app::run(config).await {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("recbot: {e}");
            ExitCode::FAILURE
        }
    }
}
