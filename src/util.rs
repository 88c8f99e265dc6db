//! Small helpers shared across layers.

use tokio::sync::watch;

/// Resolves once `flag` is true (at once if it already is, never if its sender is gone while
/// false). Returns a `Send` future, unlike holding `watch::Ref` across an await.
pub async fn until_true(flag: &mut watch::Receiver<bool>) {
    if flag.wait_for(|v| *v).await.is_err() {
        std::future::pending::<()>().await;
    }
}
