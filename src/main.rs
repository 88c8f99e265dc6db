//! The `recbot` binary: parses the command line and runs a subcommand.

use clap::{CommandFactory, Parser};
use recbot::config::{Cli, Command, LogFormat};
use std::path::Path;
use std::process::ExitCode;

/// Directives added to a log filter that names no webrtc-rs target (`rtc`, `rtc_*`, `webrtc`,
/// matched by prefix): its internals log only warnings, and its ICE agent only errors. A remote
/// can make the ICE agent warn every 200 ms for as long as a session lives ("pingAllCandidates
/// called with no candidate pairs": ~150 lines per dead session), which recbot must not turn
/// into log volume. A filter that names one of these targets is taken as it is.
const QUIET_WEBRTC: &str = "rtc=warn,webrtc=warn,rtc_ice=error";

/// `filter` with [`QUIET_WEBRTC`] unless it names a webrtc-rs target itself.
fn with_quiet_webrtc(filter: &str) -> String {
    let names_webrtc = filter.split(',').any(|directive| {
        let target = directive
            .trim()
            .split(['=', '['])
            .next()
            .unwrap_or_default();
        target.starts_with("rtc") || target.starts_with("webrtc")
    });
    if names_webrtc || filter.trim().is_empty() {
        filter.to_owned()
    } else {
        format!("{filter},{QUIET_WEBRTC}")
    }
}

fn init_logging(format: LogFormat, filter: &str) {
    let filter = tracing_subscriber::EnvFilter::try_new(with_quiet_webrtc(filter))
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new(with_quiet_webrtc("info")));
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr);
    match format {
        LogFormat::Text => builder.init(),
        LogFormat::Json => builder.json().init(),
    }
}

#[tokio::main]
async fn main() -> ExitCode {
    let cli = Cli::parse();
    match cli.command {
        Some(Command::Publish(args)) => {
            init_logging(
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
            init_logging(LogFormat::Text, "warn");
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
    init_logging(args.log_format, &args.log);
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn webrtc_is_quiet_unless_the_filter_names_it() {
        assert_eq!(with_quiet_webrtc("info"), format!("info,{QUIET_WEBRTC}"));
        assert_eq!(
            with_quiet_webrtc("warn,recbot=debug"),
            format!("warn,recbot=debug,{QUIET_WEBRTC}")
        );
        for named in [
            "info,rtc_ice=warn",
            "debug,rtc=debug",
            "webrtc=trace",
            "rtc_dtls[x]=info",
        ] {
            assert_eq!(with_quiet_webrtc(named), named);
        }
        assert!(tracing_subscriber::EnvFilter::try_new(with_quiet_webrtc("info")).is_ok());
    }
}
