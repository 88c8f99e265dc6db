//! The `recbot` binary: parses the command line and runs a subcommand.

use clap::{CommandFactory, Parser};
use recbot::cli::{Cli, Command};
use recbot::config::LogFormat;
use std::path::Path;
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
            match recbot::client::run(args).await {
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
        Some(Command::Man { out }) => man(out.as_deref()),
        None => serve(cli.serve).await,
    }
}

/// `recbot man`: the manual pages rendered by clap_mangen from the real clap definitions, so
/// they cannot drift from the flags. Into `out` (recbot.1 and a page per visible subcommand),
/// or recbot(1) to standard output.
fn man(out: Option<&Path>) -> ExitCode {
    let cmd = Cli::command();
    let written = match out {
        Some(dir) => std::fs::create_dir_all(dir).and_then(|()| clap_mangen::generate_to(cmd, dir)),
        None => clap_mangen::Man::new(cmd).render(&mut std::io::stdout().lock()),
    };
    match written {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            match out {
                Some(dir) => eprintln!("recbot man: {}: {e}", dir.display()),
                None => eprintln!("recbot man: {e}"),
            }
            ExitCode::FAILURE
        }
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
    match recbot::server::run(config).await {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("recbot: {e}");
            ExitCode::FAILURE
        }
    }
}
