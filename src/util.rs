//! Small helpers shared across layers.

use tokio::sync::watch;

/// Resolves once `flag` is true (at once if it already is, never if its sender is gone while
/// false). Returns a `Send` future, unlike holding `watch::Ref` across an await.
pub async fn until_true(flag: &mut watch::Receiver<bool>) {
    if flag.wait_for(|v| *v).await.is_err() {
        std::future::pending::<()>().await;
    }
}

/// Raises the soft limit of open files to the hard limit (each peer, socket and file takes
/// one). Returns the soft limit in force afterwards.
pub fn raise_open_files_limit() -> Option<u64> {
    use rustix::process::{getrlimit, setrlimit, Resource};
    let mut limit = getrlimit(Resource::Nofile);
    if limit.current < limit.maximum {
        limit.current = limit.maximum;
        if setrlimit(Resource::Nofile, limit).is_err() {
            return getrlimit(Resource::Nofile).current;
        }
    }
    limit.current
}

/// Constant-time comparison of a presented secret (a token, a WHIP session's secret) with the
/// expected one: the time taken does not depend on where they differ.
pub fn secret_matches(presented: &str, expected: &str) -> bool {
    use subtle::ConstantTimeEq;
    presented.as_bytes().ct_eq(expected.as_bytes()).into()
}
